"""Tasks and metrics.

A task is a name, a loss, a head factory and a set of metrics; every metric says
whether higher is better (``higher_is_better``), which is what Δ_T needs.

Label masks: a batch may carry, per task, a boolean mask of the samples labelled
for that task (School and Landmine label one task per sample). A task's loss is
the mean over its labelled samples only; a task with no labelled sample in the
batch contributes an exact zero (still attached to the graph, so balancers and
``backward`` need no special case).

Metrics accumulate on the device (no host sync per step) and are read once per
evaluation with ``compute()``, torchmetrics-style: ``update`` / ``compute`` / ``reset``.
Their accumulators are DECLARED with ``add_state(name, default, reduce)``: ``reset``,
``to(device)`` and the reduction over data-parallel ranks (``reduce``: ``sum``, ``max``,
``min`` of tensors, or ``cat`` of a list of tensors) follow from the declarations.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

REDUCTIONS = ("sum", "max", "min", "cat")
StateValue = Union[torch.Tensor, List[torch.Tensor]]


class Metric:
    """One value of a task, accumulated over a split. Subclasses declare their state in
    ``__init__`` (``add_state``) and implement ``update`` and ``compute``."""

    name: str = "metric"
    higher_is_better: bool = True

    def add_state(self, name: str, default: StateValue, reduce: str = "sum") -> None:
        """Declare an accumulator: a tensor (reduced over ranks by ``sum`` / ``max`` / ``min``)
        or an empty list of tensors (``cat``: concatenated over ranks)."""
        if reduce not in REDUCTIONS:
            raise ValueError(f"metric state {name!r}: reduce must be one of {REDUCTIONS} (got {reduce!r})")
        if (reduce == "cat") != isinstance(default, list) or (isinstance(default, list) and default):
            raise ValueError(f"metric state {name!r}: a 'cat' state starts as [], the others as a tensor")
        self.__dict__.setdefault("_states", {})[name] = (default, reduce)
        setattr(self, name, _fresh(default))

    @property
    def states(self) -> Dict[str, Tuple[StateValue, str]]:
        """{name: (default, reduce)} of the declared accumulators."""
        return self.__dict__.get("_states", {})

    def reset(self) -> None:
        for name, (default, _) in self.states.items():
            setattr(self, name, _fresh(default))

    def to(self, device) -> "Metric":
        for name, (_, reduce) in self.states.items():
            value = getattr(self, name)
            setattr(self, name, [v.to(device) for v in value] if reduce == "cat" else value.to(device))
        return self

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


def _fresh(default: StateValue) -> StateValue:
    return [] if isinstance(default, list) else default.detach().clone()


def masked_mean(per_sample: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``per_sample`` over the labelled samples; exact 0 when none is labelled."""
    if mask is None:
        return per_sample.mean()
    m = mask.to(per_sample.dtype)
    return (per_sample * m).sum() / m.sum().clamp_min(1.0)


class Task:
    """Base task. Subclasses define ``loss``, ``metrics`` and ``make_head``."""

    kind = "task"

    def __init__(self, name: str):
        self.name = name

    def loss(self, pred, target, mask=None) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> List[Metric]:
        """Fresh metric objects (one evaluation's accumulators)."""
        raise NotImplementedError

    def make_head(self, in_channels: int, **options) -> nn.Module:
        """The task's head on ``in_channels`` backbone features (``options``: the
        backbone's ``head_options``; a task ignores those it has no use for)."""
        raise NotImplementedError

    @property
    def higher_is_better(self) -> Dict[str, bool]:
        return {m.name: m.higher_is_better for m in self.metrics()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
