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
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn


class Metric:
    name: str = "metric"
    higher_is_better: bool = True

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


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
