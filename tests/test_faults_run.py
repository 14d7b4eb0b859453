"""Faults around a run (issue 21 items 5-7, 9-11; issue 17 item 3): bad values fail in one
line before anything is written, NaN affinities and policy steps stop the run at their
cause, locks cannot race, a child run waits for a concurrent one, a full disk names the
file and leaves no temp file, leftovers of killed runs are cleaned up, file modes follow
the umask."""
import json
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
import torch

import mtlbench.cli
from mtlbench.core.data import cached_arrays
from mtlbench.engine import configs
from mtlbench.engine.run import _child
from mtlbench.results import files
from mtlbench.results.store import RunFolder, atomic_write_text, config_hash, iter_runs

from test_cli import one_line_error

SCENES = ["method=adashare", "dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16",
          "dataset.size=[32,32]", "backbone.width=8", "trainer.epochs=4", "trainer.batch_size=8",
          "trainer.max_steps_per_epoch=2", "procedure.search=1.0", "procedure.warmup=0.25", "procedure.retrain=0.5"]


# ----------------------------------------------------------------- items 9-10, 17.3: bad values
@pytest.mark.parametrize("args, says", [
    (["trainer.grad_clip=-1"], "trainer.grad_clip must be a number > 0 or null (got -1)"),
    (["dataset.limit=0"], "dataset.limit must be an integer >= 1 or null (got 0)"),
    (["dataset.limit=abc"], "dataset.limit must be an integer >= 1"),
    (["results_dir="], "results_dir must be a non-empty path"),
    (["dataset.tasks=[]"], "dataset.tasks must be a non-empty list"),
    (["dataset.tasks=left"], "e.g. [left]"),
    (["dataset.tasks=[middle]"], "no task(s) ['middle']"),
    (["resume=maybe"], "resume must be true or false (got 'maybe')"),
    (["force=yes"], "force must be true or false (got 'yes')"),
    (["trainer.device=tpu"], "trainer.device must be auto, cpu, cuda"),
    (["trainer.device=cuda:7"], "trainer.device=cuda:7 but this machine has"),
    (["trainer.optimizer.lr=-1"], "trainer.optimizer.lr must be a number > 0 (got -1)"),
    (["trainer.optimizer._target_=torch.optim.Nope"], "trainer.optimizer._target_ must name an importable"),
    (["seed=abc"], "seed must be an integer >= 0 (got 'abc')"),
    (["seed=1e23"], "seed must be an integer >= 0 (got 1e+23)"),
    (["dataset.n_train=-5"], "dataset.n_train must be an integer >= 1 (got -5)"),
    (["method="], "method= needs a value; known methods:"),
    (["hydra/launcher=nonexistent"], "unknown hydra/launcher 'nonexistent'; known launchers:"),
    (["balancer=static", "balancer.weights={middle:2.0}"], "balancer.weights names unknown task"),
    (["method=tag_grouping", "procedure.every=0"], "procedure.every must be an integer >= 1 (got 0)"),
])
def test_bad_value_is_one_line_naming_the_key_and_writes_nothing(tmp_path, capsys, args, says):
    results = tmp_path / "results"
    rc = mtlbench.cli.main(["run", "profile=tiny", "trainer.progress=false", f"results_dir={results}", *args]
                           if args != ["results_dir="] else ["run", "profile=tiny", *args])
    assert rc == 2
    assert says in one_line_error(capsys)
    assert not results.exists() and not (tmp_path / "outputs").exists()


def test_error_raised_inside_a_procedure_before_training_leaves_no_folder(run_cli, results_dir, capsys):
    """AdaShare checks its arch only when it runs: a configuration error still leaves no run folder."""
    assert run_cli(*SCENES, "arch=hard_sharing") == 2
    assert "needs arch=adashare" in one_line_error(capsys)
    assert not results_dir.exists()


def test_sweep_into_an_unwritable_store_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert mtlbench.cli.main(["run", "-m", "profile=tiny", f"results_dir={blocker / 'results'}", "seed=0,1"]) == 2
    assert "results_dir=" in one_line_error(capsys)


def test_unknown_benchmark_lists_every_benchmark(capsys):
    from mtlbench.bench import BENCHES

    assert mtlbench.cli.main(["bench", "nonexistent"]) == 2
    err = one_line_error(capsys)
    assert all(name in err for name in BENCHES) and "faults" in BENCHES


def test_two_sweeps_in_the_same_second_get_distinct_sweep_folders():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    dirs = set()
    for _ in range(2):
        with initialize_config_module("mtlbench.conf", version_base=None):
            cfg = compose("config", overrides=["results_dir=r"], return_hydra_config=True)
            dirs.add(OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["dir"])
    assert len(dirs) == 2 and all(d.startswith("r/.sweeps/") for d in dirs)


# ----------------------------------------------------------------- item 5, 10: NaN at its cause
@pytest.mark.parametrize("overrides,fix", [
    (["procedure.lookahead=sgd_probe", "procedure.lookahead_lr=1e30"], "procedure.lookahead_lr"),
    (["procedure.lookahead=optimizer", "trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=1e30"],
     "trainer.optimizer.lr")])
def test_tag_affinity_divergence_stops_the_run(overrides, fix, run_cli, results_dir, capsys):
    assert run_cli("method=tag_grouping", "procedure.every=1", *overrides) == 2
    err = one_line_error(capsys)
    assert "lookahead affinity" in err and fix in err and "training step 1" in err
    (_, rec), = list(iter_runs(results_dir))
    assert rec["status"] == "failed"  # training had started: the failure is recorded


def test_tag_affinity_with_a_nan_loss_names_the_task_instead_of_averaging_it_away():
    """Item 5, the NaN-loss case: a diverged head (its weights NaN) makes task c's probe
    loss NaN; the affinity step stops naming c instead of dropping the NaN ratios."""
    from mtlbench.backbones.base import build_backbone
    from mtlbench.core.procedure import TrainingError
    from mtlbench.core.registry import ARCHS
    from mtlbench.grouping.affinity import lookahead_affinity, probe_batch
    from test_tabular_affinity import toy

    data = toy()
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone({"name": "resmlp", "width": 8, "depth": 1}, (5,)),
                                      data.tasks)
    batch = probe_batch(data.splits["train"], data.task_names, torch.Generator().manual_seed(0), probe_per_task=20)
    assert np.isfinite(lookahead_affinity(model, batch, data.tasks, lookahead_lr=0.05)).all()
    with torch.no_grad():
        for p in model.heads["c"].parameters():
            p.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss of task c on the affinity probe"):
        lookahead_affinity(model, batch, data.tasks, lookahead_lr=0.05)


def test_adashare_nan_policy_step_names_the_pass_step_and_policy_lr(run_cli, capsys, monkeypatch):
    import mtlbench.methods.adashare.search as search

    real = search.sharing_loss

    def nan_gradient(logits, start, weights, *form):  # a finite value whose gradient is NaN
        return real(logits, start, weights, *form) + torch.sqrt((logits - logits.detach()).abs().sum())

    monkeypatch.setattr(search, "sharing_loss", nan_gradient)
    assert run_cli(*SCENES) == 2
    err = one_line_error(capsys)
    assert "policy pass 1" in err and "at step 1" in err and "procedure.policy_lr" in err
    assert "trainer.optimizer.lr" not in err


# ----------------------------------------------------------------- item 6: locks and concurrency
def _contend(path, n, out):
    clash = 0
    for _ in range(n):
        folder = RunFolder(path, "ds", "m", "s0-x")
        folder.acquire(wait=True)
        try:
            fd = os.open(folder.path / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            os.unlink(folder.path / "inside")
        except FileExistsError:
            clash += 1
        folder.release()
    out.put(clash)


def test_lock_admits_one_holder_at_a_time_under_contention(tmp_path):
    """4 processes x 150 acquire / release cycles (the holder removes the lock file before
    releasing it): never two holders at once (the old PID-file takeover failed 11 in 300)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(tmp_path, 150, out)) for _ in range(4)]
    for p in procs:
        p.start()
    clashes = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert clashes == [0, 0, 0, 0]


def test_child_run_held_by_another_process_is_waited_for_then_reused(tmp_path, make_run_cli):
    """A Standley candidate another sweep is running: waited for, then reused (not failed)."""
    overrides = ["profile=tiny", "trainer.progress=false", f"results_dir={tmp_path / 'shared'}"]
    c = configs.compose(overrides)
    c = configs.expand_preset(c)
    assert make_run_cli(tmp_path / "elsewhere")(*overrides[:2]) == 0
    (_, done), = list(iter_runs(tmp_path / "elsewhere"))
    folder = RunFolder(tmp_path / "shared", "multimnist", configs.method_name(c), f"s0-{config_hash(c)}")
    assert done["run_id"] == folder.run_id
    holder, held = RunFolder(tmp_path / "shared", "multimnist", configs.method_name(c), folder.run_id), \
        threading.Event()

    def other_process():  # another thread holds the lock as another process would
        holder.acquire()
        held.set()
        time.sleep(1.0)
        atomic_write_text(holder.run_json, json.dumps(done))
        holder.release()

    t = threading.Thread(target=other_process)
    t.start()
    held.wait(10)
    t0 = time.perf_counter()
    rec, reused = _child(c)
    t.join()
    assert reused and rec == done and time.perf_counter() - t0 >= 0.9
    assert not (folder.path / "metrics.jsonl").exists()  # nothing trained here


# ----------------------------------------------------------------- item 7: a full disk
def test_full_disk_names_the_file_leaves_no_temp_file_and_resumes(run_cli, results_dir, capsys, monkeypatch):
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 5:  # config.yaml, .hydra x2, then the first checkpoint's .pt and sidecar
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert run_cli("trainer.epochs=2") == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "checkpoints" in err and "free space there" in err
    folder = next(results_dir.glob("*/*/*"))
    assert not [p for p in folder.rglob(".*") if p.is_file() and files.is_temp_file(p)]
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(files.os, "fsync", real)
    assert run_cli("trainer.epochs=2") == 0  # the rerun resumes and completes


# ----------------------------------------------------------------- item 11: leftovers
def test_leftovers_of_a_run_killed_after_its_run_json_are_removed(run_cli, results_dir):
    assert run_cli() == 0
    folder = next(results_dir.glob("*/*/*"))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "fit.3.pt").write_bytes(b"x")
    (folder / ".lock").write_text("")
    (folder / ".run.json.123.abcdef.tmp").write_text("{")
    (folder / ".config.yaml.oldstyle.tmp").write_text("x")
    assert run_cli() == 0  # skipped: completed
    assert sorted(p.name for p in folder.iterdir()) == [".hydra", "config.yaml", "history.csv", "log.txt", "metrics.jsonl",
                                                        "run.json"]


def test_cache_in_the_way_or_missing_an_array_is_handled(tmp_path):
    make = lambda: {"a": np.arange(3), "b": np.ones(2)}  # noqa: E731
    blocked = tmp_path / "blocked.npz"
    blocked.mkdir()  # a directory where the cache file should go
    assert set(cached_arrays(blocked, make)) == {"a", "b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.npz"]  # no 21 MB temp file left
    path = tmp_path / "c.npz"
    cached_arrays(path, make)
    with np.load(path) as z:
        keep = {k: z[k] for k in z.files if k != "b"}
    np.savez(path, **keep)  # a cache missing one of its arrays
    assert set(cached_arrays(path, make)) == {"a", "b"}  # regenerated, not trusted
    with np.load(path) as z:
        assert "b" in z.files


# ----------------------------------------------------------------- issue 17 item 3: file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "run.json", "{}")
        files.atomic_write_bytes(tmp_path / "fit.1.pt", b"x")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(mode)}
