"""Parallel sweeps on Hydra's joblib launcher: every run lands complete, nothing lost."""
import importlib.util
import json

import pytest

from mtlbench.results.store import iter_runs

needs_joblib = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                                  reason="hydra-joblib-launcher not installed (it is in the dev extra)")


@needs_joblib
def test_joblib_sweep_of_six_runs_with_two_workers(run_cli, results_dir):
    code = run_cli("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
                   "method=stl,hard_sharing", "seed=0,1,2", "trainer.progress=false")
    assert code == 0
    runs = list(iter_runs(results_dir))
    assert len(runs) == 6
    assert {(r["method"], r["seed"]) for _, r in runs} == {(m, s) for m in ("stl", "hard_sharing") for s in (0, 1, 2)}
    for folder, rec in runs:
        assert rec["status"] == "completed" and rec["metrics"]["test"]
        assert json.loads((folder / "run.json").read_text()) == rec
        assert not (folder / ".lock").exists() and not (folder / "checkpoints").exists()
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == rec["epochs"]
    # a rerun of the sweep skips what is done (no new folder, run.json untouched)
    before = {f: (f / "run.json").stat().st_mtime_ns for f, _ in runs}
    assert run_cli("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
                   "method=stl,hard_sharing", "seed=0,1,2", "trainer.progress=false") == 0
    assert {f: (f / "run.json").stat().st_mtime_ns for f, _ in iter_runs(results_dir)} == before


@needs_joblib
def test_failed_job_in_a_worker_process_fails_the_sweep(run_cli, results_dir, capsys):
    code = run_cli("-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "seed=0,1",
                   "dataset=nyuv2", "dataset.root=/nonexistent", "trainer.progress=false")
    assert code == 2
    assert "2 job(s) of the sweep failed" in capsys.readouterr().err
