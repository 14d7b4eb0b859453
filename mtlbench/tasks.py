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


class Accuracy(Metric):
    """Fraction of labelled samples whose arg-max class equals the target (in [0, 1])."""

    name = "accuracy"
    higher_is_better = True

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.correct = None
        self.count = None

    def update(self, pred, target, mask) -> None:
        hit = pred.argmax(dim=1) == target
        if mask is not None:
            hit = hit & mask
            n = mask.sum()
        else:
            n = torch.tensor(target.shape[0], device=target.device)
        c = hit.sum()
        self.correct = c if self.correct is None else self.correct + c
        self.count = n if self.count is None else self.count + n

    def compute(self) -> float:
        if self.count is None or int(self.count) == 0:
            return float("nan")
        return float(self.correct) / float(self.count)


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


class ClassificationHead(nn.Module):
    """Global average pool (for feature maps) + linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True)]
            in_channels = hidden
        layers.append(nn.Linear(in_channels, num_classes))
        self.fc = nn.Sequential(*layers)

    def forward(self, x):
        if x.dim() > 2:
            x = x.mean(dim=tuple(range(2, x.dim())))
        return self.fc(x)


class ClassificationTask(Task):
    """Multi-class classification: cross-entropy loss, accuracy (higher is better)."""

    kind = "classification"

    def __init__(self, name: str, num_classes: int, head_hidden: int = 0):
        super().__init__(name)
        self.num_classes = num_classes
        self.head_hidden = head_hidden

    def loss(self, pred, target, mask=None):
        if mask is None:
            return F.cross_entropy(pred, target)
        return masked_mean(F.cross_entropy(pred, target, reduction="none"), mask)

    def metrics(self):
        return [Accuracy()]

    def make_head(self, in_channels, **options):
        return ClassificationHead(in_channels, self.num_classes, self.head_hidden)
