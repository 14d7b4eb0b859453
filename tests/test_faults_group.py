"""``group`` never guesses and never leaves a half-written selection (issue 21 items 9-11):
a duplicated task column or a literal NaN score is an error naming the cell, ``scores=``
empty is one line, and a full disk leaves no 0-byte ``out=`` file (a hand-made 2-task
table: a alone 0.3, b alone 0.4, a+b 0.25 / 0.35, each network costs 1)."""
import json
import os

import pytest

import mtlbench.cli
from mtlbench.results import files

from test_cli import one_line_error

GOOD = "network,cost,a,b\na,1,0.3,\nb,1,,0.4\na+b,1,0.25,0.35\n"


@pytest.mark.parametrize("csv, says", [
    ("network,cost,a,a\na,1,0.3,0.2\n", "column 'a' appears twice in the header"),  # was read as task 'a.1'
    ("network,cost,a,b\na,1,0.3,NaN\nb,1,,0.4\n", "row 2, column 'b' is 'NaN', not a score"),  # was "lacks b"
])
def test_ambiguous_score_tables_are_errors_naming_the_cell(tmp_path, capsys, csv, says):
    (tmp_path / "s.csv").write_text(csv)
    out = tmp_path / "sel.json"
    assert mtlbench.cli.main(["group", f"scores={tmp_path / 's.csv'}", "budget=2", f"out={out}"]) == 2
    err = one_line_error(capsys)
    assert says in err and str(tmp_path / "s.csv") in err and not out.exists()


def test_empty_scores_is_one_line(capsys):
    assert mtlbench.cli.main(["group", "scores=", "budget=1"]) == 2
    assert "scores must name a file" in one_line_error(capsys)


def test_full_disk_leaves_no_empty_selection_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "s.csv").write_text(GOOD)
    out = tmp_path / "sel.json"
    args = ["group", f"scores={tmp_path / 's.csv'}", "budget=1", f"out={out}"]

    def full(fd):
        raise OSError(28, "No space left on device")

    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", full)
    assert mtlbench.cli.main(args) == 2
    err = one_line_error(capsys)
    assert f"cannot write {out}: No space left on device" in err and "free space" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]  # neither sel.json nor a temp file
    monkeypatch.setattr(files.os, "fsync", real)
    assert mtlbench.cli.main(args) == 0
    # budget 1 buys one network: only a+b covers both tasks (total 0.25 + 0.35)
    assert json.loads(out.read_text())["total"] == pytest.approx(0.6)
