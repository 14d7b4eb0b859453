"""Procedures drive one or more trainer runs (registered in ``PROCEDURES``).

A procedure is built as ``Procedure(**cfg)`` and called with a ``RunContext``; it
returns a ``ProcedureResult``. ``single`` (the default) is one ``Trainer.fit``.
Multi-phase methods (AdaShare) and multi-run searches (task grouping) compose their
phases from ``ctx.build_model`` / ``ctx.build_balancer`` / ``ctx.trainer`` the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mtlbench.core.data import MTLData
from mtlbench.engine.trainer import FitResult, Trainer


@dataclass
class RunContext:
    cfg: dict                      # the resolved run config (plain dict)
    data: MTLData
    seed: int
    build_model: Callable          # (tasks) -> MTLModel
    build_balancer: Callable       # (task_names) -> Balancer
    make_trainer: Callable[..., Trainer]   # (**overrides of trainer config) -> Trainer
    log_epoch: Callable[[dict], None]      # append a row to metrics.jsonl
    folder: Optional[Path] = None          # the run folder (None when not writing one), for extra outputs


@dataclass
class ProcedureResult:
    """What a run reports: the fit of the deployed model plus procedure-specific extras
    (recorded in run.json under ``procedure_info``)."""
    fit: FitResult
    model: object
    info: dict = field(default_factory=dict)
    params: Optional[dict] = None  # replaces count_params(model) in run.json (e.g. deployed vs trained)
    flops: Optional[dict] = None   # replaces count_flops(model, ...) in run.json


class Procedure:
    def __call__(self, ctx: RunContext) -> ProcedureResult:
        raise NotImplementedError
