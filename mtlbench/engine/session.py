"""A training session: everything one fit (or one procedure phase) carries from step to
step and epoch to epoch, and its checkpoint (``snapshot`` / ``restore``).

``Trainer.prepare`` builds a ``Session``; procedures may add what their phase needs before
``Trainer.restore``: more optimizers (``optimizers["policy"]``), generators
(``generators["probe"]``) and plain state (``state[...]``: anything ``torch.save`` takes).
All of it is checkpointed, so a resumed phase continues exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from mtlbench.core.balancer import Balancer, BalancerContext
from mtlbench.core.model import MTLModel
from mtlbench.engine.checkpoint import CheckpointSlot, rng_state, set_rng_state


@dataclass
class Session:
    model: MTLModel
    balancer: Balancer
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    ctx: BalancerContext
    net: Any                                   # what the forward pass calls: the model, DDP-wrapped / compiled
    tasks: list
    params: List[torch.nn.Parameter]           # the model parameters the main optimizer updates (clipped)
    optimizers: Dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    generators: Dict[str, torch.Generator] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)
    epoch: int = 0                             # epochs completed
    cursor: Optional[dict] = None              # a mid-epoch checkpoint's position (resume)
    elapsed: float = 0.0                       # training time before this process (resume)
    last_pass: Optional[dict] = None           # steps / samples of the last train pass (its epoch row)
    started: float = field(default_factory=time.perf_counter)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def wall_time(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def generator_states(self) -> Dict[str, torch.Tensor]:
        return {k: g.get_state() for k, g in self.generators.items()}

    def set_generator_states(self, states: Dict[str, torch.Tensor]) -> None:
        for k, st in states.items():
            self.generators[k].set_state(st)


def snapshot(s: Session, slot: Optional[CheckpointSlot], cursor: Optional[dict] = None,
             done: Optional[object] = None) -> None:
    """Write the session to ``slot`` (no-op without one): at an epoch end, at a mid-epoch
    ``cursor``, or as a finished phase whose ``done`` result a resumed run replays."""
    if slot is None:
        return
    state = {"epoch": s.epoch, "step": 0 if cursor is None else cursor["step"], "model": s.model.state_dict(),
             "balancer": s.balancer.state_dict(), "rng": rng_state()}
    if done is not None:
        state.update(done=True, result=dataclasses.asdict(done) if dataclasses.is_dataclass(done) else done)
    else:
        state.update(optimizers={k: o.state_dict() for k, o in s.optimizers.items()},
                     scheduler=None if s.scheduler is None else s.scheduler.state_dict(),
                     generators=s.generator_states(), state=s.state, history=s.history, cursor=cursor,
                     ctx_step=s.ctx.step, elapsed=s.wall_time())
    slot.save(state)


def restore(s: Session, slot: Optional[CheckpointSlot], resume: bool = True):
    """Load ``slot`` into the session. Returns the stored result of a finished phase (the
    model holds its final weights), else None (the session continues from the checkpoint,
    or starts afresh when there is none)."""
    saved = slot.load() if slot is not None and resume else None
    if saved is None:
        return None
    s.model.load_state_dict(saved["model"])
    s.balancer.load_state_dict(saved["balancer"])
    if saved.get("done"):
        set_rng_state(saved["rng"])
        return saved["result"]
    for k, opt in s.optimizers.items():
        opt.load_state_dict(saved["optimizers"][k])
    if s.scheduler is not None and saved.get("scheduler") is not None:
        s.scheduler.load_state_dict(saved["scheduler"])
    s.set_generator_states(saved["generators"])
    s.state, s.history, s.epoch = saved["state"], saved["history"], saved["epoch"]
    s.cursor, s.ctx.step, s.elapsed = saved["cursor"], saved["ctx_step"], saved["elapsed"]
    s.started = time.perf_counter()
    set_rng_state(saved["rng"])
    return None
