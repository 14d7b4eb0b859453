"""``bench balancers`` and the balancer section of ``bench tabular``: the kind of each balancer
comes from the autograd passes of one step (1 for a loss-scale method, T for per-task
gradients), the floor takes T passes, and the rows carry the ratios the headline judges."""
from pathlib import Path

import pytest

import mtlbench.cli
from mtlbench.bench.balancers import FLOOR, bench_dataset, headline
from mtlbench.core.registry import load_all

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_kinds_from_pass_counts_and_ratios_on_multimnist():
    load_all()
    rows = bench_dataset("multimnist", ["equal", "gls", "mgda", "pcgrad", "moco"], batch_size=4, steps=1,
                         repeats=1, say=lambda *_: None)
    by = {r["balancer"]: r for r in rows}
    assert set(by) == {FLOOR, "equal", "gls", "mgda", "pcgrad", "moco"}
    # two tasks: one backward for the loss-scale methods, one pass per task otherwise (MGDA: one
    # per task to the representation, then one backward from it)
    assert [by[n]["passes"] for n in ("equal", "gls", "mgda", "pcgrad", "moco", FLOOR)] == [1, 1, 3, 2, 2, 2]
    assert by["equal"]["kind"] == by["gls"]["kind"] == "loss-scale"
    assert by["mgda"]["kind"] == "representation" and by["pcgrad"]["kind"] == "parameters"
    assert by["equal"]["x_equal"] == 1.0 and by[FLOOR]["x_floor"] == 1.0
    assert by["pcgrad"]["ratio"] == by["pcgrad"]["x_floor"] and by["mgda"]["ratio"] == by["mgda"]["x_equal"]
    assert by["moco"]["state"] > by["equal"]["state"]  # MoCo keeps T tracked gradients
    if by["equal"]["peak"] is not None:
        assert by["equal"]["extra_mb"] == 0.0
    head = headline(rows)
    assert len(head) == 1 and head[0].startswith("multimnist (T=2): loss-scale max")


def test_unknown_balancer_is_one_line(capsys):
    assert mtlbench.cli.main(["bench", "balancers", "--balancers", "equal,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


@pytest.mark.skipif(not (DATA / "landmine").is_dir(), reason="real data folder absent")
def test_tabular_balancer_costs_on_landmine_fields():
    from mtlbench.bench.tabular import balancer_costs

    load_all()
    rows = balancer_costs("landmine", 3, ["equal", "upgrad"], str(DATA), steps=1)
    assert [(r["balancer"], r["tasks"], r["status"]) for r in rows] == [("equal", 3, "ok"), ("upgrad", 3, "ok")]
    assert rows[0]["kind"] == "loss-scale" and rows[1]["kind"] == "parameters"
    assert rows[0]["x_equal"] == 1.0 and rows[1]["ms"] > 0
