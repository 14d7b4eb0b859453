"""Checkpoint and exact resume, NaN stops, corrupt checkpoints (issue: runs that survive faults)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import mtlbench.cli
import mtlbench.tasks
from mtlbench.results.store import iter_runs

BUDGET = ["trainer.epochs=3", "trainer.max_steps_per_epoch=12", "trainer.batch_size=32",
          "dataset.limit=512", "trainer.progress=false", "trainer.checkpoint_every_steps=3"]


def only_run(results_dir):
    runs = list(iter_runs(results_dir))
    assert len(runs) == 1
    return runs[0]


def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path, data_root, run_cli):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "mtlbench", "run", *BUDGET, f"results_dir={killed}", f"data_root={data_root}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, meta = time.time() + 120, None
    try:
        while time.time() < deadline and proc.poll() is None:
            metas = list(killed.glob("*/*/*/checkpoints/fit.json"))
            if metas:
                try:
                    m = json.loads(metas[0].read_text())
                except (OSError, ValueError):
                    m = None
                if m and m["epoch"] >= 1 and m["step"] > 0:  # inside epoch 2
                    meta = m
                    break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert meta is not None, "the run finished (or never checkpointed) before it could be killed"
    folders = [p.parent for p in killed.glob("*/*/*/config.yaml")]
    assert len(folders) == 1 and not (folders[0] / "run.json").exists()
    assert (folders[0] / ".lock").exists()  # a dead process's lock: the rerun takes it over

    # rerunning the same command resumes (same run id), in-process this time
    assert run_cli(*BUDGET, f"results_dir={killed}") == 0
    folder, rec = only_run(killed)
    assert rec["status"] == "completed" and not (folder / "checkpoints").exists()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # no epoch logged twice

    assert run_cli(*BUDGET, f"results_dir={clean}") == 0
    _, ref = only_run(clean)
    assert ref["run_id"] == rec["run_id"]
    assert rec["metrics"] == ref["metrics"] and rec["losses"] == ref["losses"]
    ref_rows = [json.loads(line) for line in next(clean.glob("*/*/*/metrics.jsonl")).read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]


def test_resume_false_starts_afresh(results_dir, run_cli, monkeypatch):
    calls = {"n": 0}
    real = mtlbench.tasks.ClassificationTask.loss

    def failing(self, pred, target, mask=None):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 2 * 12 * 2 + 5:  # in epoch 3 (2 tasks x 12 steps per epoch)
            raise KeyboardInterrupt
        return real(self, pred, target, mask)

    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", failing)
    with pytest.raises(KeyboardInterrupt):
        run_cli(*BUDGET)
    folder, rec = only_run(results_dir)
    assert rec["status"] == "failed" and rec["reason"] == "interrupted"
    assert (folder / "checkpoints" / "fit.json").is_file()
    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", real)
    assert run_cli(*BUDGET, "resume=false") == 0
    _, rec = only_run(results_dir)
    assert rec["status"] == "completed"


def test_nan_loss_fails_with_task_and_step_and_keeps_checkpoint(results_dir, run_cli, monkeypatch, capsys):
    calls = {"n": 0}
    real = mtlbench.tasks.ClassificationTask.loss

    def poisoned(self, pred, target, mask=None):
        loss = real(self, pred, target, mask)
        if self.name == "right" and torch.is_grad_enabled():  # training steps only
            calls["n"] += 1
            if calls["n"] == 12 + 5:  # step 5 of epoch 2
                return loss * float("nan")
        return loss

    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", poisoned)
    args = [a for a in BUDGET if "checkpoint_every" not in a]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "right" in err[0] and "step 5" in err[0] and "epoch 2" in err[0]
    folder, rec = only_run(results_dir)
    assert rec["status"] == "failed" and "non-finite" in rec["reason"] and "right" in rec["reason"]
    meta = json.loads((folder / "checkpoints" / "fit.json").read_text())
    assert meta["epoch"] == 1 and meta["step"] == 0  # the last good checkpoint (end of epoch 1)
    # a report over this store says the failed run was left out
    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", real)
    assert run_cli(*args, "method=stl") == 0
    capsys.readouterr()
    mtlbench.cli.main(["report", "dataset=multimnist", f"results_dir={results_dir}",
                       f"reports_dir={results_dir.parent / 'reports'}", "plots=false"])
    out = capsys.readouterr()
    assert "1 failed or unfinished run(s) left out" in out.out + out.err


def test_corrupt_checkpoint_is_one_line_naming_the_file(results_dir, run_cli, monkeypatch, capsys):
    real = mtlbench.tasks.ClassificationTask.loss
    calls = {"n": 0}

    def interrupt(self, *a, **k):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 2 * 12 + 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_cli(*BUDGET)
    monkeypatch.setattr(mtlbench.tasks.ClassificationTask, "loss", real)
    folder, _ = only_run(results_dir)
    ckpt = folder / "checkpoints" / json.loads((folder / "checkpoints" / "fit.json").read_text())["file"]
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    assert run_cli(*BUDGET) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "resume=false" in err[0]
    # the other advice works too (the old "delete it" did not: the sidecar remained)
    assert f"or delete {ckpt.parent}" in err[0]
    shutil.rmtree(ckpt.parent)
    assert run_cli(*BUDGET) == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: file permissions do not bind")
def test_unwritable_results_dir_fails_early_in_one_line(tmp_path, run_cli, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run_cli(f"results_dir={locked / 'results'}") == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results_dir" in err[0]
