"""The ``RunContext`` a run hands its procedure (see ``mtlbench.core.procedure``): model and
balancer builders, trainers bound to the run's named checkpoint slots, the metrics log,
config nodes composed by Hydra, and child runs through the results store."""
from __future__ import annotations

import inspect
import os
from typing import Callable, Optional

import torch

from mtlbench.backbones.base import build_backbone
from mtlbench.core.data import MTLData, apply_limit
from mtlbench.core.procedure import RunContext
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS
from mtlbench.engine import configs
from mtlbench.engine.checkpoint import CheckpointDir
from mtlbench.engine.distributed import SINGLE, DistContext
from mtlbench.engine.loggers import RunLog, make_logger
from mtlbench.engine.trainer import Trainer


def kwargs_of(node: dict, *drop: str) -> dict:
    """A config node's keyword arguments (without ``name`` and ``drop``)."""
    return {k: v for k, v in node.items() if k not in ("name", *drop)}


def build_data(dcfg: dict, data_root: Optional[str] = None) -> MTLData:
    """Build the dataset from its config node (generic keys: name, root, split_seed, limit, tasks)."""
    builder = DATASETS.get(dcfg["name"])
    root = dcfg.get("root") or data_root
    root = os.path.expanduser(root) if root else None
    extra, params = {}, inspect.signature(builder).parameters
    if dcfg.get("tasks") and "tasks" in params:
        extra["tasks"] = list(dcfg["tasks"])  # builders that can skip reading unused tasks' files
    if dcfg.get("limit") and "limit" in params and int(dcfg["limit"]) > 0:
        extra["limit"] = int(dcfg["limit"])  # builders that prepare only the samples kept (apply_limit still cuts)
    data = builder(root=root, split_seed=int(dcfg.get("split_seed") or 0),
                   **kwargs_of(dcfg, "root", "split_seed", "limit", "tasks"), **extra)
    if dcfg.get("tasks"):
        data = data.select_tasks(list(dcfg["tasks"]))
    return apply_limit(data, dcfg.get("limit"))


def epoch_line(row: dict) -> str:
    val = " ".join(f"{t}.{m}={v:.4f}" for t, ms in (row.get("val") or {}).items() for m, v in ms.items())
    loss = " ".join(f"{t}={v:.4f}" for t, v in row["train_loss"].items())
    phase = f"{row['phase']} " if row.get("phase") else ""  # multi-phase procedures tag their rows
    return f"{phase}epoch {row['epoch']}: train loss {loss} | val {val} ({row.get('epoch_time_s', 0):.1f}s)"


def make_context(c: dict, data: MTLData, folder=None, say: Optional[Callable] = None,
                 dctx: DistContext = SINGLE, run_child: Optional[Callable[[dict], dict]] = None) -> RunContext:
    seed = int(c["seed"])
    arch_cls, balancer_cls = ARCHS.get(c["arch"]["name"]), BALANCERS.get(c["balancer"]["name"])
    checkpoints, writes = None, folder is not None and dctx.is_main
    if folder is not None:
        checkpoints = CheckpointDir(folder.path / "checkpoints", folder.path / "metrics.jsonl", writer=dctx.is_main)
    epoch_logger = make_logger(c.get("logger"), folder.path if writes else None)  # history.csv / tensorboard
    run_log = RunLog(folder.path / "log.txt") if writes else None

    def build_model(tasks, arch: Optional[dict] = None, backbone: Optional[dict] = None):
        acfg, bcfg = arch or c["arch"], backbone or c["backbone"]
        cls = ARCHS.get(acfg["name"]) if arch else arch_cls
        return cls(lambda: build_backbone(bcfg, data.input_shape), tasks, **kwargs_of(acfg))

    def build_balancer(task_names, balancer: Optional[dict] = None):
        bcfg = balancer or c["balancer"]
        cls = BALANCERS.get(bcfg["name"]) if balancer else balancer_cls
        return cls(task_names, **kwargs_of(bcfg))

    def make_trainer(**overrides) -> Trainer:
        """A trainer with the run's config (``overrides`` win), bound to the run's
        checkpoint folder: its fits and phases checkpoint under the slot names given."""
        trainer = Trainer(**{**c["trainer"], **overrides})
        trainer.dist = dctx
        if dctx.active and trainer.device.type == "cuda":
            trainer.device = torch.device("cuda", dctx.local_rank)
        trainer.checkpoints = checkpoints
        trainer.resume = bool(c.get("resume", True))
        trainer.log_sink = run_log.write if run_log is not None else None
        return trainer

    def log_epoch(row: dict) -> None:
        if folder is not None and dctx.is_main:
            folder.append_jsonl("metrics.jsonl", row)
        if epoch_logger is not None:
            epoch_logger.log(row)
        if say is not None:
            say(epoch_line(row))

    return RunContext(cfg=c, data=data, seed=seed, build_model=build_model, build_balancer=build_balancer,
                      make_trainer=make_trainer, log_epoch=log_epoch,
                      folder=folder.path if folder is not None and dctx.is_main else None,
                      say=say or (lambda *a: None), config_node=configs.config_node, run_child=run_child)
