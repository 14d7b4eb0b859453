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

Metric groups. ``Task.metric_group()`` returns a ``MetricGroup``: all of a task's metrics,
updated ONCE per batch (``Trainer.evaluate`` uses it), so intermediates several metrics
share (an arg-max, an angle map, an upsampled prediction) are computed once. A group
declares its accumulators like a metric; ``parts()`` lists the objects holding declared
state (the DDP reduction walks them). The default group is a ``MetricSet`` over
``metrics()``; a task with a fused group (the dense tasks) makes ``metrics()`` return
``GroupMetric`` views: each view is one single-valued ``Metric`` backed by its own group,
so both paths compute the same values through the same code.
``Task.eval_update(group, pred, target, mask)`` updates the group with one evaluation
batch and returns the batch's loss (a task may share work between the two, e.g. one
upsampling).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

REDUCTIONS = ("sum", "max", "min", "cat")
StateValue = Union[torch.Tensor, List[torch.Tensor]]


class Stateful:
    """Declared accumulators (``add_state``) with ``reset`` / ``to`` derived from them."""

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
        """{name: (default, reduce)} of the accumulators declared on this object."""
        return self.__dict__.get("_states", {})

    def parts(self) -> List["Stateful"]:
        """The objects whose declared states make up this accumulator (reduced over ranks)."""
        return [self]

    def reset(self) -> None:
        for part in self.parts():
            for name, (default, _) in part.states.items():
                setattr(part, name, _fresh(default))

    def to(self, device):
        for part in self.parts():
            for name, (_, reduce) in part.states.items():
                value = getattr(part, name)
                setattr(part, name, [v.to(device) for v in value] if reduce == "cat" else value.to(device))
        return self


class Metric(Stateful):
    """One value of a task, accumulated over a split. Subclasses declare their state in
    ``__init__`` (``add_state``) and implement ``update`` and ``compute``."""

    name: str = "metric"
    higher_is_better: bool = True

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class MetricGroup(Stateful):
    """All metrics of a task, updated once per batch. Subclasses declare their state, set
    ``higher_is_better`` ({metric name: bool}, in the order ``compute`` returns them) and
    implement ``update`` and ``compute`` (-> {metric name: value})."""

    higher_is_better: Dict[str, bool] = {}

    @property
    def names(self) -> List[str]:
        return list(self.higher_is_better)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        raise NotImplementedError


class MetricSet(MetricGroup):
    """The default group: single-valued metrics updated one after the other."""

    def __init__(self, metrics: Sequence[Metric]):
        self.metrics = list(metrics)
        self.higher_is_better = {m.name: m.higher_is_better for m in self.metrics}

    def parts(self) -> List[Stateful]:
        return [p for m in self.metrics for p in m.parts()]

    def update(self, pred, target, mask) -> None:
        for m in self.metrics:
            m.update(pred, target, mask)

    def compute(self) -> Dict[str, float]:
        return {m.name: m.compute() for m in self.metrics}


class GroupMetric(Metric):
    """One value of a ``MetricGroup`` as a single-valued Metric, backed by its own group
    (so several views never update one group twice)."""

    def __init__(self, group: MetricGroup, name: str):
        if name not in group.higher_is_better:
            raise ValueError(f"metric {name!r} is not one of {group.names}")
        self.group, self.name, self.higher_is_better = group, name, group.higher_is_better[name]

    def parts(self) -> List[Stateful]:
        return self.group.parts()

    def update(self, pred, target, mask) -> None:
        self.group.update(pred, target, mask)

    def compute(self) -> float:
        return self.group.compute()[self.name]


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

    def metric_group(self) -> MetricGroup:
        """All metrics of one evaluation, updated once per batch (default: ``metrics()``
        updated one by one)."""
        return MetricSet(self.metrics())

    def eval_update(self, group: MetricGroup, pred, target, mask=None) -> torch.Tensor:
        """Update ``group`` with one evaluation batch; the batch's loss (as ``loss``)."""
        group.update(pred, target, mask)
        return self.loss(pred, target, mask)

    def make_head(self, in_channels: int, **options) -> nn.Module:
        """The task's head on ``in_channels`` backbone features (``options``: the
        backbone's ``head_options``; a task ignores those it has no use for)."""
        raise NotImplementedError

    @property
    def higher_is_better(self) -> Dict[str, bool]:
        return {m.name: m.higher_is_better for m in self.metrics()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
