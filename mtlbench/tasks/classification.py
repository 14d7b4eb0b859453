"""Multi-class classification: cross-entropy loss, accuracy, a pooled linear head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.core.tasks import Metric, Task, masked_mean


class Accuracy(Metric):
    """Fraction of labelled samples whose arg-max class equals the target (in [0, 1])."""

    name = "accuracy"
    higher_is_better = True

    def __init__(self):
        self.add_state("correct", torch.zeros((), dtype=torch.long))
        self.add_state("count", torch.zeros((), dtype=torch.long))

    def update(self, pred, target, mask) -> None:
        hit = pred.argmax(dim=1) == target
        if mask is not None:
            hit = hit & mask
            n = mask.sum()
        else:
            n = target.shape[0]
        self.correct = self.correct + hit.sum()
        self.count = self.count + n

    def compute(self) -> float:
        if int(self.count) == 0:
            return float("nan")
        return float(self.correct) / float(self.count)


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
