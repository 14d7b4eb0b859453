"""Procedures drive one or more trainer runs (registered in ``PROCEDURES``).

A procedure is built as ``Procedure(**cfg)`` and called with a ``RunContext``; it returns a
``ProcedureResult``. ``single`` (the default, ``methods/single.py``) is one ``Trainer.fit``.
Multi-phase methods (AdaShare) and searches (task grouping) compose their phases from the
context and the trainer's public building blocks (``Trainer.prepare`` / ``restore`` /
``train_pass`` / ``run_epochs`` / ``evaluate`` / ``finish``, see ``mtlbench.engine.trainer``),
so every phase gets the scheduler, the finite-loss check, autocast, DDP sharding and
checkpointing of the trainer.

The ``RunContext`` (built by the engine for each run) gives:

* ``cfg``, ``data``, ``seed``, ``folder`` (the run folder, None when not writing one);
* ``build_model(tasks, arch=None, backbone=None)`` / ``build_balancer(task_names, balancer=None)``
  (the run's configured nodes, or the given config nodes);
* ``make_trainer(**overrides)``: a ``Trainer`` with the run's trainer config (overridden),
  bound to the run's checkpoint folder: ``fit(..., slot=NAME)`` / ``restore(session, NAME)``
  checkpoint under a slot name the procedure chooses (``warmup``, ``search``,
  ``retrain-0``, ``candidate-<hash>``...), unique within the run;
* ``log_epoch(row)``: one row of metrics.jsonl (and the console line);
* ``say(message)``: one progress line on the console ("candidate k/N", "phase p/P");
* ``config_node(group, name)``: a config group's node (``conf/<group>/<name>.yaml``),
  composed by Hydra with the run's search path (plugin configs included);
* ``run_child(cfg) -> (record, reused)``: run (or reuse, when completed) another run
  described by a full config (e.g. a task-grouping candidate) in the results store; its
  run.json record and whether it was reused. Methods never import the engine's run module.

``distributed`` (class attribute, default True): False makes the run refuse torchrun with
one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional

from mtlbench.core.data import MTLData

Scores = Dict[str, Dict[str, float]]


class TrainingError(RuntimeError):
    """A run that cannot continue (e.g. a non-finite loss); ``str()`` names task and step."""


@dataclass
class FitResult:
    history: List[dict]
    selected_epoch: int
    val: Scores
    val_losses: Dict[str, float]
    test: Scores
    test_losses: Dict[str, float]
    wall_time_s: float
    extra: dict = field(default_factory=dict)


@dataclass
class RunContext:
    cfg: dict                      # the resolved run config (plain dict)
    data: MTLData
    seed: int
    build_model: Callable          # (tasks, arch=None, backbone=None) -> MTLModel
    build_balancer: Callable       # (task_names, balancer=None) -> Balancer
    make_trainer: Callable         # (**overrides of the trainer config) -> Trainer
    log_epoch: Callable[[dict], None]
    folder: Optional[Path] = None
    say: Callable[[str], None] = print
    config_node: Optional[Callable[[str, str], dict]] = None
    run_child: Optional[Callable[[dict], tuple]] = None


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
    distributed: ClassVar[bool] = True

    def __call__(self, ctx: RunContext) -> ProcedureResult:
        raise NotImplementedError
