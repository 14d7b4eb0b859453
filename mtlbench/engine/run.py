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
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from mtlbench import __version__
from mtlbench.core.model import count_flops, count_params
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS, PROCEDURES
from mtlbench.engine.checkpoint import checkpoint_log_bytes
from mtlbench.core.procedure import RunContext
from mtlbench.engine import configs
from mtlbench.engine.configs import expand_preset, method_name
from mtlbench.engine.context import build_data, kwargs_of, make_context  # noqa: F401  (build_data re-exported)
from mtlbench.engine.distributed import from_env
from mtlbench.engine.trainer import Trainer
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
    c = expand_preset(cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True))
    dctx = from_env(c["trainer"].get("device") or "auto")  # torchrun: only rank 0 writes or talks
    main = dctx.is_main
    say = (lambda *a: None) if quiet or not main else (lambda *a: print("[mtlbench]", *a, flush=True))
    method, dataset, seed = method_name(c), c["dataset"]["name"], int(c["seed"])
    check_config(c, dctx)
    run_id = f"s{seed}-{config_hash(c)}"
    folder = RunFolder(c["results_dir"], dataset, method, run_id)
    if folder.is_completed():
        if not c.get("force"):
            say(f"skip: {method} on {dataset} (seed {seed}) already completed at {folder.run_json} "
                f"(force=true runs it again under a new id)")
            return folder.record()
        run_id = f"{run_id}-f{_dt.datetime.now().strftime('%Y%m%d%H%M%S%f')}"
        folder = RunFolder(c["results_dir"], dataset, method, run_id)
    if main:
        folder.acquire()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        if main:
            atomic_write_text(folder.path / "config.yaml", OmegaConf.to_yaml(c))
            for name, text in (hydra_files or {}).items():
                (folder.path / ".hydra").mkdir(exist_ok=True)
                atomic_write_text(folder.path / ".hydra" / name, text)
            if _prepare_resume(folder.path, bool(c.get("resume", True))):
                say(f"resuming {method} on {dataset} (seed {seed}) from {folder.path / 'checkpoints'}")
        if dctx.active:
            torch.distributed.barrier()  # ranks > 0 read the checkpoints rank 0 kept
        seed_everything(int(c["dataset"].get("split_seed") or 0))
        data = build_data(c["dataset"], c.get("data_root"))
        seed_everything(seed)
        procedure = PROCEDURES.get(c["procedure"]["name"])(**kwargs_of(c["procedure"]))
        say(f"{method} on {dataset} (seed {seed}, tasks {data.task_names}, "
            f"sizes {data.sizes()}) -> {folder.path}")
        result = procedure(make_context(c, data, folder, say, dctx, run_child=_child))
    except BaseException as exc:
        if main:
            _write_failed(folder, c, method, run_id, started, exc)
            folder.release()
        raise
    record = run_record(c, result, data, run_id, method, started, time.perf_counter() - t0)
    if dctx.active:
        record["world_size"] = dctx.world
    if not main:
        return record
    atomic_write_json(folder.run_json, record)
    shutil.rmtree(folder.path / "checkpoints", ignore_errors=True)  # only for resuming an unfinished run
    folder.release()
    shown = " ".join(f"{t}.{m}={v:.4f}" for t, ms in result.fit.test.items() for m, v in ms.items())
    say(f"test: {shown}")
    say(f"run.json: {folder.run_json}")
    return record


def check_config(c: dict, dctx) -> None:
    """Unknown names, bad trainer settings and parts that refuse torchrun fail here, before
    anything is written."""
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
        "selection": {"mode": c["trainer"]["selection"], "epoch": fit.selected_epoch},
        "epochs": len(fit.history), "data_sizes": data.sizes(),
        "wall_time_s": round(wall, 3), "train_time_s": round(fit.wall_time_s, 3),
        "started_at": started, "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(next(model.parameters()).device), "versions": versions(), "git_commit": git_commit(),
        "procedure_info": result.info, "config_hash": config_hash(c),
    }


def _child(cfg: dict):
    """A procedure's child run (e.g. a task-grouping candidate): (its record, whether a
    completed run with the same config was reused from the store)."""
    c = expand_preset(cfg)
    folder = RunFolder(c["results_dir"], c["dataset"]["name"], method_name(c), f"s{int(c['seed'])}-{config_hash(c)}")
    reused = folder.is_completed()
    return execute(c, quiet=True), reused


def child_context(c: dict, say=None) -> RunContext:
    """A context for child runs outside a run (benchmarks): ``cfg``, ``say``, ``config_node``
    and ``run_child``; no data, no model builders."""
    return RunContext(cfg=c, data=None, seed=int(c["seed"]), build_model=None, build_balancer=None,
                      make_trainer=None, log_epoch=lambda row: None, say=say or (lambda *a: None),
                      config_node=configs.config_node, run_child=_child)


def _prepare_resume(path: Path, resume: bool) -> bool:
    """Cut metrics.jsonl back to the newest checkpoint and keep the checkpoints (True), or
    start afresh: no checkpoints, no metrics.jsonl (False)."""
    ckpt, log = path / "checkpoints", path / "metrics.jsonl"
    size = checkpoint_log_bytes(ckpt) if resume and ckpt.is_dir() else None
    if size is None:
        shutil.rmtree(ckpt, ignore_errors=True)
        log.unlink(missing_ok=True)
        return False
    if log.is_file() and log.stat().st_size > size:
        with open(log, "r+b") as f:
            f.truncate(size)
    return True


def _write_failed(folder: RunFolder, c: dict, method: str, run_id: str, started: str, exc: BaseException):
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
    try:
        atomic_write_json(folder.run_json, {
            "status": "failed", "run_id": run_id, "method": method, "dataset": c["dataset"]["name"],
            "seed": int(c["seed"]), "reason": reason, "started_at": started,
            "arch": c["arch"]["name"], "balancer": c["balancer"]["name"],
            "procedure": c["procedure"]["name"], "backbone": c["backbone"]["name"]})
    except (OSError, StoreError):
        pass
