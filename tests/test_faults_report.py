"""A report no bad run can break, no kill can leave half written, and no typo can overwrite
(issue 21 items 8-10; issue 17 item 3), on fabricated stores with known numbers."""
import json

import pytest

import mtlbench.cli
from mtlbench.results.protocol import shorten

from test_cli import one_line_error
from test_report import HS, STL, fake_run, report


@pytest.fixture
def store(tmp_path):
    results = tmp_path / "results"
    for method, vals in (("stl", STL), ("hs", HS)):
        for seed, (acc, err) in vals.items():
            fake_run(results, method, seed, acc, err)
    return results


def _folder(results, method, seed):
    return next((results / "toy" / method).glob(f"s{seed}-*"))


def test_bad_runs_are_skipped_each_with_a_note_naming_its_file(store, tmp_path, capsys):
    for seed, (acc, err) in {3: (0.1, 0.9), 4: (0.2, 0.8), 5: (0.3, 0.7), 6: (0.4, 0.6), 7: (0.5, 0.5),
                             8: (0.6, 0.4), 9: (0.7, 0.3)}.items():
        fake_run(store, "hs", seed, acc, err)
    bad = {s: _folder(store, "hs", s) for s in range(3, 10)}
    (bad[3] / "run.json").write_text('["valid JSON", "not a record"]')
    rec = json.loads((bad[4] / "run.json").read_text())
    (bad[4] / "run.json").write_text(json.dumps({**rec, "metrics": "oops"}))
    (bad[5] / "run.json").write_text('{"status": "completed"}')
    (bad[6] / "config.yaml").write_bytes(b"\xff\xfe\x00binary")
    (bad[7] / "config.yaml").write_text("just a garbled line")
    (bad[8] / "run.json").write_text((bad[8] / "run.json").read_text().replace('"acc": 0.6', '"acc": NaN'))
    (bad[9] / "metrics.jsonl").write_text('{"epoch": 1, "balancer_weights": {"a": 1.0, "b"')  # truncated
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "plots=false", "format=[md]", "n_resamples=99") == 0
    md = (reports / "toy" / "table.md").read_text()
    for seed in (3, 4, 5):  # unreadable run.json: named, with what is wrong
        assert str(bad[seed] / "run.json") in md
    assert "not a JSON object" in md and "malformed metrics" in md and "without run_id" in md
    for seed in (6, 7):  # unreadable config.yaml: named, never "another protocol"
        assert str(bad[seed] / "config.yaml") in md
    assert "another protocol" not in md
    assert f"{bad[8] / 'run.json'} left out: non-finite test metric a/acc" in md
    assert f"{bad[9] / 'metrics.jsonl'} line 1" in md  # its curve is left out, its results kept
    summary = (reports / "toy" / "summary.csv").read_text().splitlines()
    hs = next(line for line in summary if line.startswith("hs,"))
    assert hs.split(",")[1] == "4"  # seeds 0-2 and 9: n counts exactly the seeds averaged
    # a rerun of a run whose run.json is malformed runs it again instead of crashing
    from mtlbench.results.store import RunFolder

    assert not RunFolder(store, "toy", "hs", bad[4].name).is_completed()


def test_stale_outputs_and_killed_writers_temp_files_are_removed(store, tmp_path, capsys):
    reports, fast = tmp_path / "reports", ("plots=false", "n_resamples=99")
    assert report(store, reports, "dataset=toy", "format=[md,tex]", *fast) == 0
    out = reports / "toy"
    (out / "balancer_weights.png").write_bytes(b"\x89PNG of an earlier report")  # a plot no longer drawn
    (out / ".table.tex.4242.abcdef.tmp").write_text("half")  # a report killed mid-write
    (out / "my_notes.txt").write_text("not a report output: kept")
    capsys.readouterr()
    assert report(store, reports, "dataset=toy", "format=[md]", *fast) == 0
    assert sorted(p.name for p in out.iterdir()) == ["my_notes.txt", "significance.csv", "summary.csv",
                                                     "summary.md", "table.md"]
    listed = capsys.readouterr().out.splitlines()[-1]
    assert "table.tex" not in listed and "balancer_weights" not in listed


def test_report_ignores_datasets_without_completed_runs(store, tmp_path, capsys):
    fake_run(store, "stl", 0, 0.5, 0.5, dataset="broken", status="failed")
    reports = tmp_path / "reports"
    assert mtlbench.cli.main(["report", f"results_dir={store}", f"reports_dir={reports}", "n_resamples=99",
                              "plots=false", "format=[md]"]) == 0
    assert not (reports / "broken").exists() and (reports / "toy" / "table.md").is_file()
    assert "broken" in (reports / "all" / "summary.md").read_text()  # named as left out
    assert report(store, reports, "dataset=broken") == 2
    assert "no completed runs for dataset 'broken'" in one_line_error(capsys)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A store and its good report (written once for the bad-value cases)."""
    results, reports = tmp_path_factory.mktemp("reported") / "results", tmp_path_factory.mktemp("reports")
    for method, vals in (("stl", STL), ("hs", HS)):
        for seed, (acc, err) in vals.items():
            fake_run(results, method, seed, acc, err)
    assert report(results, reports, "dataset=toy", "n_resamples=99", "format=[md,csv]", "plots=false") == 0
    return results, reports


@pytest.mark.parametrize("args, says", [
    (["baseline=hs_typo"], "unknown baseline 'hs_typo'"),
    (["methods=[hs,nope]"], "unknown methods 'nope'"),
    (["metrics=[nonexistent]"], "unknown metric 'nonexistent'"),
    (["split=train"], "split must be one of test, val (got 'train')"),
    (["posthoc=foo"], "posthoc must be one of wilcoxon, conover (got 'foo')"),
    (["n_resamples=0"], "n_resamples must be an integer >= 1 (got 0)"),
    (["plots=maybe"], "plots must be true or false"),
    (["alpha=abc"], "alpha must lie in (0, 1)"),
])
def test_bad_report_values_exit_2_and_overwrite_nothing(reported, capsys, args, says):
    results, reports = reported
    before = {p.name: p.read_bytes() for p in (reports / "toy").iterdir()}
    assert report(results, reports, "dataset=toy", *args) == 2
    assert says in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in (reports / "toy").iterdir()} == before


def test_report_paths_that_cannot_work_are_one_line(store, tmp_path, capsys):
    assert mtlbench.cli.main(["report", "results_dir=", "dataset=toy"]) == 2
    assert "results_dir must be a non-empty path" in one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert report(store, blocker / "reports", "dataset=toy") == 2
    err = one_line_error(capsys)
    assert str(blocker / "reports" / "toy") in err and "reports_dir=" in err


def test_failed_run_note_is_never_cut_mid_word(tmp_path):
    results, reports = tmp_path / "results", tmp_path / "reports"
    for seed, (acc, err) in STL.items():
        fake_run(results, "stl", seed, acc, err)
    fake_run(results, "hs", 0, 0.5, 0.5, status="failed")
    rec_path = next((results / "toy" / "hs").glob("*")) / "run.json"
    rec = json.loads(rec_path.read_text())
    rec["reason"] = "TrainingError: non-finite training loss for ['right'] in epoch 2/3 (right at step 5); lower"
    rec_path.write_text(json.dumps(rec))
    assert report(results, reports, "dataset=toy", "plots=false", "format=[md]", "n_resamples=99") == 0
    md = (reports / "toy" / "table.md").read_text()
    note = next(line for line in md.splitlines() if "failed or unfinished" in line)
    shown = note.split("(failed: ")[1].rsplit(")", 1)[0]
    assert shown.endswith("…") and len(shown) < len(rec["reason"])
    assert rec["reason"].split()[:len(shown.split())] == shown.rstrip("…").split()  # every word shown whole


def test_shorten_cuts_at_word_boundaries():
    assert shorten("short text") == "short text"
    assert shorten("alpha beta gamma delta", 12) == "alpha beta…"
    assert shorten("alpha\nbeta", 80) == "alpha beta"
    assert shorten("abcdefghijklmnop", 5) == "abcde…"  # one long word: cut, marked
