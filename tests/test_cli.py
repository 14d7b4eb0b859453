import math
import os
import subprocess
import sys

import pandas as pd
import pytest

import mtlbench.cli
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS
from mtlbench.results.store import iter_runs


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mtlbench: error:")
    assert "Traceback" not in err
    return lines[0]


def nothing_written(results_dir):
    assert not results_dir.exists() or not any(results_dir.rglob("*")), list(results_dir.rglob("*"))


# ----------------------------------------------------------------- bad input: exit 2, one line
@pytest.mark.parametrize("override,expected", [
    ("method=nope", ["'nope'", "hard_sharing", "stl"]),
    ("dataset=nope", ["'nope'", "multimnist"]),
    ("balancer=nope", ["'nope'", "equal", "static"]),
    ("arch=nope", ["'nope'", "hard_sharing", "independent"]),
    ("trainer.epochs=-1", ["trainer.epochs", "-1"]),
    ("trainer.epochs=0", ["trainer.epochs"]),
    ("trainer.batch_size=2.5", ["trainer.batch_size"]),
    ("trainer.selection=worst", ["trainer.selection", "worst"]),
    ("foo=1", ["foo"]),
    ("method=stl,nope", ["'nope'"]),
])
def test_bad_run_input(override, expected, run_cli, results_dir, capsys):
    assert run_cli(override) == 2
    line = one_line_error(capsys)
    for text in expected:
        assert text in line
    nothing_written(results_dir)


def test_unknown_method_lists_every_preset(run_cli, capsys):
    assert run_cli("method=nope") == 2
    line = one_line_error(capsys)
    for preset in mtlbench.cli.config_options("method"):
        assert preset in line


def test_unknown_names_list_the_registry(run_cli, capsys):
    for group, reg in (("arch", ARCHS), ("balancer", BALANCERS), ("dataset", DATASETS)):
        assert run_cli(f"{group}=nope") == 2
        line = one_line_error(capsys)
        assert all(name in line for name in reg.names()), (group, line)


def sweep_cli(results_dir, *overrides):
    return mtlbench.cli.main(["run", "-m", "profile=tiny", "trainer.progress=false",
                              f"results_dir={results_dir}", *overrides])


def test_bad_input_in_a_sweep_is_one_line(results_dir, capsys):
    assert sweep_cli(results_dir, "method=stl,nope") == 2
    assert "'nope'" in one_line_error(capsys)
    nothing_written(results_dir)


def test_unknown_command(capsys):
    assert mtlbench.cli.main(["frobnicate"]) == 2
    line = one_line_error(capsys)
    assert "frobnicate" in line and "run" in line and "report" in line


def test_help(capsys):
    assert mtlbench.cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage" in out and "run" in out and "report" in out


# ----------------------------------------------------------------- report
def test_report_needs_dataset(tmp_path, capsys):
    assert mtlbench.cli.main(["report", f"results_dir={tmp_path}", f"reports_dir={tmp_path / 'rep'}"]) == 2
    assert "dataset" in one_line_error(capsys)
    assert not (tmp_path / "rep").exists()


def test_report_with_no_runs(tmp_path, capsys):
    assert mtlbench.cli.main(["report", "dataset=multimnist", f"results_dir={tmp_path / 'empty'}",
                              f"reports_dir={tmp_path / 'rep'}"]) == 2
    assert "no runs" in one_line_error(capsys)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("args", [["dataset=multimnist", "colour=blue"], ["dataset=multimnist", "oops"]])
def test_report_bad_keys(tmp_path, capsys, args):
    assert mtlbench.cli.main(["report", f"results_dir={tmp_path}", *args]) == 2
    one_line_error(capsys)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny -m sweep: method=stl,hard_sharing x seed=0,1 (4 runs) -> results dir."""
    results = tmp_path_factory.mktemp("sweep") / "results"
    assert sweep_cli(results, "method=stl,hard_sharing", "seed=0,1") == 0
    return results


def test_sweep_writes_one_folder_per_job(sweep):
    folders = sorted(p.relative_to(sweep).parts[:2] for p in sweep.glob("*/*/*/run.json"))
    assert folders == [("multimnist", "hard_sharing")] * 2 + [("multimnist", "stl")] * 2


def test_report_after_sweep(sweep, tmp_path, capsys):
    reports = tmp_path / "reports"
    assert mtlbench.cli.main(["report", "dataset=multimnist", f"results_dir={sweep}",
                              f"reports_dir={reports}"]) == 0
    out = capsys.readouterr().out
    assert "summary.csv" in out
    csv = reports / "multimnist" / "summary.csv"
    assert csv.is_file() and (reports / "multimnist" / "summary.md").is_file()
    df = pd.read_csv(csv)
    assert {"method", "n_seeds", "params", "delta_t"} <= set(df.columns)
    assert {"left/accuracy_mean", "left/accuracy_std", "right/accuracy_mean"} <= set(df.columns)
    assert pd.api.types.is_numeric_dtype(df["delta_t"])
    assert pd.api.types.is_numeric_dtype(df["params"])
    rows = df.set_index("method")
    assert list(df["method"]) == ["stl", "hard_sharing"]  # baseline first
    assert (rows["n_seeds"] == 2).all()
    assert math.isfinite(rows.loc["hard_sharing", "delta_t"])
    assert rows.loc["stl", "delta_t"] == pytest.approx(0.0)
    assert rows.loc["hard_sharing", "params"] < rows.loc["stl", "params"]
    md = (reports / "multimnist" / "summary.md").read_text()
    assert "Hard sharing" in md and "Δ_T" in md  # display names (names=false: identifiers)


def test_report_methods_filter_keeps_the_baseline(sweep, tmp_path, capsys):
    reports = tmp_path / "reports"
    assert mtlbench.cli.main(["report", "dataset=multimnist", "methods=[hard_sharing]",
                              f"results_dir={sweep}", f"reports_dir={reports}"]) == 0
    df = pd.read_csv(reports / "multimnist" / "summary.csv")
    assert sorted(df["method"]) == ["hard_sharing", "stl"]


def test_report_unknown_dataset_names_the_known_ones(sweep, tmp_path, capsys):
    assert mtlbench.cli.main(["report", "dataset=nope", f"results_dir={sweep}",
                              f"reports_dir={tmp_path / 'rep'}"]) == 2
    line = one_line_error(capsys)
    assert "nope" in line and "multimnist" in line


# ----------------------------------------------------------------- real subprocesses (slow)
def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # 2 shared cores (see conftest)
    env.pop("MTLBENCH_DEBUG", None)
    return env


def test_subprocess_tiny_run(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "mtlbench", "run", "profile=tiny", "trainer.progress=false",
         f"results_dir={results}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run.json" in proc.stdout
    assert list(results.glob("multimnist/hard_sharing/*/run.json"))
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_subprocess_bad_method(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mtlbench", "run", "method=nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("mtlbench: error:") and "'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_sweep_continues_past_a_failing_job(results_dir, capsys):
    assert sweep_cli(results_dir, "dataset.tasks=[middle],[left]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("mtlbench: error:") for line in err)
    assert "middle" in err[0] and "1 job(s)" in err[1]
    status = sorted(rec["status"] for _, rec in iter_runs(results_dir))
    assert status == ["completed"]  # the second job still ran; the first (a data error) wrote no run folder


def test_multirun_flag_after_overrides(run_cli, results_dir, capsys):
    code = run_cli("-m", "method=stl,hard_sharing")
    assert code == 0, capsys.readouterr().err
    assert len(list(iter_runs(results_dir))) == 2
