"""One run, end to end: config -> data -> procedure -> run.json.

``execute(cfg)`` is what ``python -m mtlbench run`` calls for each (multi)run job.
"""
from __future__ import annotations

import datetime as _dt
import platform
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from mtlbench import __version__
from mtlbench.core.data import DataError
from mtlbench.core.model import count_flops, count_params
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS, PROCEDURES
from mtlbench.engine.checkpoint import checkpoint_log_bytes
from mtlbench.engine.checkpoint import tidy as tidy_checkpoints
from mtlbench.core.procedure import RunContext
from mtlbench.engine import configs
from mtlbench.engine.configs import expand_preset, method_name
from mtlbench.engine.context import build_data, kwargs_of, make_context  # noqa: F401  (re-exported)
from mtlbench.engine.distributed import from_env
from mtlbench.engine.loggers import RunLog, read_rows, tee
from mtlbench.engine.trainer import Trainer
from mtlbench.engine.validate import check_run_config, preflight
from mtlbench.results.files import fault_point, is_temp_file, remove_temp_files
from mtlbench.results.store import RunFolder, StoreError, atomic_write_json, atomic_write_text, config_hash


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict:
    import hydra
    import pandas

    return {"mtlbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__, "hydra": hydra.__version__}


def git_commit() -> Optional[str]:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def execute(cfg, hydra_files: Optional[dict] = None, quiet: bool = False) -> dict:
    """Run (or skip, when already completed) the run described by ``cfg`` (a DictConfig or a
    resolved dict); return its record."""
    return _execute(cfg, hydra_files, quiet)[0]


def _execute(cfg, hydra_files: Optional[dict] = None, quiet: bool = False, wait: bool = False):
    """(record, whether this call trained it). Order: every config value checked, the data
    and the procedure's parts built (errors here write nothing), then the run folder is
    claimed (lock; ``wait``: wait for another process running the same id), trained,
    recorded."""
    c = expand_preset(cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True))
    check_run_config(c)
    dctx = from_env(c["trainer"].get("device") or "auto")  # torchrun: only rank 0 writes or talks
    main = dctx.is_main
    say = (lambda *a: None) if quiet or not main else (lambda *a: print("[mtlbench]", *a, flush=True))
    method, dataset, seed = method_name(c), c["dataset"]["name"], int(c["seed"])
    check_config(c, dctx)
    folder, done = _target_folder(c, method, say)
    if done is not None:
        return done, False
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    seed_everything(int(c["dataset"].get("split_seed") or 0))
    data = build_data(c["dataset"], c.get("data_root"))
    seed_everything(seed)
    procedure = preflight(c, data)
    claim = claim_folder(folder, c, hydra_files, wait, say) if main else Claim()
    if claim.completed:
        return folder.record(), False
    if main:
        say = tee(say, RunLog(folder.path / "log.txt"))  # the run folder keeps every line it prints
    if dctx.active:
        torch.distributed.barrier()  # ranks > 0 read the checkpoints rank 0 kept
    say(f"{method} on {dataset} (seed {seed}, tasks {data.task_names}, sizes {data.sizes()}) -> {folder.path}")
    try:
        result = procedure(make_context(c, data, folder, say, dctx, run_child=claim.child_runner()))
    except BaseException as exc:
        if main:
            record_failure(folder, claim, c, method, started, exc)
        raise
    record = run_record(c, result, data, folder.run_id, method, started, time.perf_counter() - t0)
    if dctx.active:
        record["world_size"] = dctx.world
    if not main:
        return record, True
    record["budget"] = budget_of(read_rows(folder.path / "metrics.jsonl") or result.fit.history, c)
    finish_folder(folder, record)
    shown = " ".join(f"{t}.{m}={v:.4f}" for t, ms in result.fit.test.items() for m, v in ms.items())
    say(f"test: {shown}")
    say(f"run.json: {folder.run_json}")
    return record, True


def check_config(c: dict, dctx) -> None:
    """Unknown names, bad trainer settings and parts that refuse torchrun fail here, before
    anything is written (the generic values: ``validate.check_run_config``)."""
    for reg, node in ((ARCHS, "arch"), (BALANCERS, "balancer"), (PROCEDURES, "procedure"), (DATASETS, "dataset")):
        reg.get(c[node]["name"])
    check = Trainer(**c["trainer"])
    check.dist = dctx
    check.check_distributed(PROCEDURES.get(c["procedure"]["name"]), BALANCERS.get(c["balancer"]["name"]))


def run_record(c: dict, result, data, run_id: str, method: str, started: str, wall: float) -> dict:
    """run.json of a completed run."""
    fit, model = result.fit, result.model
    return {
        "status": "completed", "run_id": run_id, "method": method, "dataset": c["dataset"]["name"],
        "seed": int(c["seed"]), "tasks": data.task_names,
        "metrics": {"test": fit.test, "val": fit.val},
        "losses": {"test": fit.test_losses, "val": fit.val_losses,
                   "train": fit.history[-1]["train_loss"] if fit.history else {}},
        "higher_is_better": {t.name: t.higher_is_better for t in data.tasks},
        "arch": c["arch"]["name"], "balancer": c["balancer"]["name"],
        "procedure": c["procedure"]["name"], "backbone": c["backbone"]["name"],
        "params": result.params if result.params is not None else count_params(model),
        "flops": result.flops if result.flops is not None else
        count_flops(model, data.input_shape, device=next(model.parameters()).device, example=data.example_input()),
        "role": c.get("role") or "main",  # "candidate": a task-grouping candidate, never in reports
        "selection": {"mode": c["trainer"]["selection"], "epoch": fit.selected_epoch,
                      **(fit.extra or {}).get("selection", {})},
        "epochs": len(fit.history), "data_sizes": data.sizes(),
        "wall_time_s": round(wall, 3), "train_time_s": round(fit.wall_time_s, 3),
        "started_at": started, "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(next(model.parameters()).device), "versions": versions(), "git_commit": git_commit(),
        "procedure_info": result.info, "config_hash": config_hash(c),
    }


def budget_of(rows, c: dict) -> dict:
    """What ran: steps per epoch and samples seen (from the logged epoch rows, every phase of
    a procedure included; per phase when there are phases), next to the configured cap."""
    rows = [r for r in rows if "steps" in r]
    out = {"max_steps_per_epoch": c["trainer"].get("max_steps_per_epoch"),
           "steps_per_epoch": [int(r["steps"]) for r in rows],
           "samples_seen": int(sum(r.get("samples", 0) for r in rows))}
    phases = {}
    for r in rows:
        if r.get("phase"):
            p = phases.setdefault(r["phase"], {"steps_per_epoch": [], "samples_seen": 0})
            p["steps_per_epoch"].append(int(r["steps"]))
            p["samples_seen"] += int(r.get("samples", 0))
    if phases:
        out["phases"] = phases
    return out


def _child(cfg: dict):
    """A procedure's child run (e.g. a task-grouping candidate): (its record, whether a
    completed run with the same config was reused from the store). A child run that another
    process is running (a concurrent sweep sharing candidates) is waited for, then reused."""
    record, trained = _execute(expand_preset(cfg), quiet=True, wait=True)
    return record, not trained


def child_context(c: dict, say=None) -> RunContext:
    """A context for child runs outside a run (benchmarks): ``cfg``, ``say``, ``config_node``
    and ``run_child``; no data, no model builders."""
    return RunContext(cfg=c, data=None, seed=int(c["seed"]), build_model=None, build_balancer=None,
                      make_trainer=None, log_epoch=lambda row: None, say=say or (lambda *a: None),
                      config_node=configs.config_node, run_child=_child)


# ----------------------------------------------------------------- the run folder
def _target_folder(c: dict, method: str, say):
    """(the run folder, None), or (None, its record) when the run is completed and not forced
    (leftovers of a run killed after its run.json are tidied up then)."""
    run_id = f"s{int(c['seed'])}-{config_hash(c)}"
    folder = RunFolder(c["results_dir"], c["dataset"]["name"], method, run_id)
    if not folder.is_completed():
        return folder, None
    if not c.get("force"):
        tidy_completed(folder)
        say(f"skip: {method} on {c['dataset']['name']} (seed {c['seed']}) already completed at {folder.run_json} "
            f"(force=true runs it again under a new id)")
        return None, folder.record()
    run_id = f"{run_id}-f{_dt.datetime.now().strftime('%Y%m%d%H%M%S%f')}"
    return RunFolder(c["results_dir"], c["dataset"]["name"], method, run_id), None


@dataclass
class Claim:
    """What ``claim_folder`` did: ``fresh`` = the first folder it created (None: the run
    folder existed), ``completed`` = another process completed the run meanwhile,
    ``children`` = child runs started (a procedure's training has begun)."""
    fresh: Optional[Path] = None
    completed: bool = False
    children: list = field(default_factory=list)

    def child_runner(self):
        def run(cfg: dict):
            self.children.append(cfg)
            return _child(cfg)
        return run


def claim_folder(folder: RunFolder, c: dict, hydra_files: Optional[dict], wait: bool, say) -> Claim:
    """Lock the run folder, clean what killed writers left, write config.yaml (and Hydra's
    files) and prepare the resume."""
    fresh = next((p for p in reversed([folder.path, *folder.path.parents]) if not p.exists()), None)
    folder.acquire(wait=wait, on_wait=say)
    if folder.is_completed():  # completed by the process we waited for
        tidy_completed(folder, locked=True)
        folder.release()
        return Claim(completed=True)
    try:
        remove_temp_files(folder.path)
        atomic_write_text(folder.path / "config.yaml", OmegaConf.to_yaml(c))
        for name, text in (hydra_files or {}).items():
            (folder.path / ".hydra").mkdir(exist_ok=True)
            atomic_write_text(folder.path / ".hydra" / name, text)
        if _prepare_resume(folder.path, bool(c.get("resume", True))):
            say(f"resuming {method_name(c)} on {c['dataset']['name']} (seed {c['seed']}) from "
                f"{folder.path / 'checkpoints'}")
    except BaseException:
        _discard(folder, fresh)
        raise
    return Claim(fresh=fresh)


def _prepare_resume(path: Path, resume: bool) -> bool:
    """Cut metrics.jsonl back to the newest checkpoint and keep the checkpoints (True), or
    start afresh: no checkpoints, no metrics.jsonl (False)."""
    ckpt, log = path / "checkpoints", path / "metrics.jsonl"
    if resume and ckpt.is_dir():
        tidy_checkpoints(ckpt)
    size = checkpoint_log_bytes(ckpt) if resume and ckpt.is_dir() else None
    if size is None:
        shutil.rmtree(ckpt, ignore_errors=True)
        log.unlink(missing_ok=True)
        return False
    if log.is_file() and log.stat().st_size > size:
        with open(log, "r+b") as f:
            f.truncate(size)
    return True


def finish_folder(folder: RunFolder, record: dict) -> None:
    """run.json, then the checkpoints go and the lock is released."""
    atomic_write_json(folder.run_json, record)
    fault_point("record")
    shutil.rmtree(folder.path / "checkpoints", ignore_errors=True)  # only for resuming an unfinished run
    folder.release()


def tidy_completed(folder: RunFolder, locked: bool = False) -> None:
    """A completed run's leftovers (checkpoints, temp files, the lock file of a run killed
    between its run.json and its cleanup) are removed, when no other process holds it."""
    dirty = (folder.path / "checkpoints").exists() or folder.lock_path.exists() or any(
        is_temp_file(p) for p in folder.path.rglob(".*"))
    if not dirty or not (locked or folder.try_acquire()):
        return
    shutil.rmtree(folder.path / "checkpoints", ignore_errors=True)
    remove_temp_files(folder.path)
    if not locked:
        folder.release()


def record_failure(folder: RunFolder, claim: Claim, c: dict, method: str, started: str, exc: BaseException):
    """A configuration or data error (ValueError, TypeError, KeyError, DataError) raised by
    the procedure before any training (no log row, no checkpoint, no child run) in a folder
    this run created: the folder is removed, nothing is left. Else run.json
    ``status: failed`` with the reason."""
    p = folder.path
    config_error = isinstance(exc, (ValueError, TypeError, KeyError, DataError))
    if config_error and claim.fresh is not None and not claim.children and not (p / "metrics.jsonl").exists() \
            and not (p / "checkpoints").exists():
        _discard(folder, claim.fresh)
        return
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
    try:
        atomic_write_json(folder.run_json, {
            "status": "failed", "run_id": folder.run_id, "method": method, "dataset": c["dataset"]["name"],
            "seed": int(c["seed"]), "reason": reason, "started_at": started,
            "arch": c["arch"]["name"], "balancer": c["balancer"]["name"],
            "procedure": c["procedure"]["name"], "backbone": c["backbone"]["name"]})
    except (OSError, StoreError):
        pass
    folder.release()


def _discard(folder: RunFolder, fresh: Optional[Path]) -> None:
    """Remove a run folder this process created, and the empty parents it created too."""
    if fresh is None:
        folder.release()
        return
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.release()
    if fresh == folder.path:
        return
    for parent in folder.path.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        if parent == fresh:
            break
