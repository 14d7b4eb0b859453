"""The architecture interface: build a multi-task model from a backbone factory and tasks.

An architecture (registered in ``ARCHS``) is a class ``Arch(backbone_fn, tasks, **cfg)``
where ``backbone_fn()`` returns a fresh ``Backbone`` (architectures that need several
copies, e.g. one per task, call it several times). The model returns ``{task: prediction}``.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from mtlbench.backbones.base import Backbone
from mtlbench.core.tasks import Task

BackboneFn = Callable[[], Backbone]


class MTLModel(nn.Module):
    """Architectures subclass this. ``shared_representation`` holds, after a forward
    pass, the tensor every task head reads (when the architecture has one; gradient
    balancers such as MGDA-UB use it), else None."""

    def __init__(self, tasks: Sequence[Task]):
        super().__init__()
        self.task_names: List[str] = [t.name for t in tasks]
        self.shared_representation: Optional[torch.Tensor] = None

    def forward(self, x) -> Dict[str, torch.Tensor]:
        return self.forward_tasks(x, self.task_names)

    def forward_tasks(self, x, tasks: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Predictions for ``tasks`` only, computing no more than they need."""
        raise NotImplementedError

    def shared_parameters(self) -> List[nn.Parameter]:
        """Parameters used by more than one task (what gradient balancers act on)."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> List[nn.Parameter]:
        """Every parameter needed to predict ``task`` (shared ones included)."""
        raise NotImplementedError


def make_heads(backbone: Backbone, tasks: Sequence[Task]) -> nn.ModuleDict:
    """One head per task on ``backbone``'s output (``backbone.head_options`` passed on,
    e.g. an ASPP head for dense tasks)."""
    opts = getattr(backbone, "head_options", None) or {}
    return nn.ModuleDict({t.name: t.make_head(backbone.out_channels, **opts) for t in tasks})


def _count(params: Iterable[nn.Parameter]) -> int:
    seen, n = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def count_params(model: MTLModel) -> dict:
    """``total``: parameters a deployment serving all tasks needs; ``per_task``: for one task."""
    return {"total": _count(model.parameters()),
            "per_task": {t: _count(model.task_parameters(t)) for t in model.task_names}}


def count_flops(model: MTLModel, input_shape, device="cpu") -> dict:
    """Forward FLOPs for one sample: all tasks at once, and each task alone."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)

    def flops(tasks):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.forward_tasks(x, tasks)
        return int(counter.get_total_flops())

    out = {"total": flops(model.task_names), "per_task": {t: flops([t]) for t in model.task_names}}
    model.train(was_training)
    return out
