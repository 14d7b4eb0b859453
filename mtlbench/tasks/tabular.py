"""Scalar tasks for tabular multi-task data: regression and binary classification.

Both read a head's ``[B, 1]`` (or ``[B]``) output and a ``[B]`` target; a per-sample bool
mask (School and Landmine label one task per sample) restricts loss and metrics to the
labelled samples, with the conventions of ``mtlbench.core.tasks`` (loss = mean over labelled
samples, exact 0 when the batch has none).

``RegressionTask`` (MSE loss). Targets may be stored standardised (``y = (raw - y_mean) /
y_std``, fit on the training split): the loss is then on the standardised scale (so tasks
of different scales weigh alike) while every metric is reported on the ORIGINAL scale
(``pred * y_std + y_mean``). Metrics, over all labelled samples of a split:

* ``rmse`` ↓ = sqrt(mean (y - ŷ)²); ``mae`` ↓ = mean |y - ŷ|;
* ``explained_variance`` ↑ = 1 - Var(y - ŷ) / Var(y) (population variances, as
  ``sklearn.metrics.explained_variance_score``; the School literature's "explained
  variance", Bakker & Heskes 2003 / Argyriou et al. 2008, is the same ratio in %).
  NaN when the split has < 2 labelled samples of the task or Var(y) = 0.

Sums are accumulated on the device in float64 and read once in ``compute()``.

``BinaryTask`` (binary cross-entropy on logits; targets 0/1). Metrics:

* ``auc`` ↑: ``sklearn.metrics.roc_auc_score`` over all labelled samples of the split
  (predictions are kept on the device and concatenated at ``compute()``); NaN when only
  one class is present;
* ``accuracy`` ↑: fraction of labelled samples with (logit > 0) == target.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.core.tasks import Metric, Task, masked_mean


class ScalarHead(nn.Module):
    """Linear (optionally one hidden ReLU layer) to one output, returned as ``[B]``."""

    def __init__(self, in_channels: int, hidden: int = 0):
        super().__init__()
        layers: list = []
        if hidden:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True)]
            in_channels = hidden
        layers.append(nn.Linear(in_channels, 1))
        self.fc = nn.Sequential(*layers)

    def forward(self, x):
        if x.dim() > 2:
            x = x.mean(dim=tuple(range(2, x.dim())))
        return self.fc(x).squeeze(-1)


def _flat(pred: torch.Tensor) -> torch.Tensor:
    return pred.reshape(pred.shape[0]) if pred.dim() > 1 else pred


def _select(pred, target, mask):
    p, y = _flat(pred).detach(), target.reshape(-1)
    if mask is not None:
        m = mask.to(device=p.device, dtype=torch.bool)
        p, y = p[m], y[m]
    return p, y


class _Sums(Metric):
    """Accumulates n, Σy, Σy², Σr, Σr², Σ|r| (r = y - ŷ) in float64 on the device."""

    def __init__(self, y_mean: float = 0.0, y_std: float = 1.0):
        self.y_mean, self.y_std = float(y_mean), float(y_std)
        self.add_state("sums", torch.zeros(6, dtype=torch.float64))

    def update(self, pred, target, mask) -> None:
        p, y = _select(pred, target, mask)
        p = p.double() * self.y_std + self.y_mean
        y = y.double() * self.y_std + self.y_mean
        r = y - p
        s = torch.stack([torch.ones_like(y).sum(), y.sum(), (y * y).sum(), r.sum(), (r * r).sum(), r.abs().sum()])
        self.sums = self.sums + s

    def _values(self):
        n, sy, syy, sr, srr, sar = self.sums.tolist()
        return None if n == 0 else (n, sy, syy, sr, srr, sar)


class RMSE(_Sums):
    name, higher_is_better = "rmse", False

    def compute(self) -> float:
        v = self._values()
        return float("nan") if v is None else math.sqrt(max(v[4] / v[0], 0.0))


class MAE(_Sums):
    name, higher_is_better = "mae", False

    def compute(self) -> float:
        v = self._values()
        return float("nan") if v is None else v[5] / v[0]


class ExplainedVariance(_Sums):
    name, higher_is_better = "explained_variance", True

    def compute(self) -> float:
        v = self._values()
        if v is None or v[0] < 2:
            return float("nan")
        n, sy, syy, sr, srr, _ = v
        var_y = syy / n - (sy / n) ** 2
        var_r = srr / n - (sr / n) ** 2
        if var_y <= 1e-12 * max(1.0, syy / n):
            return float("nan")
        return 1.0 - var_r / var_y


class _Collect(Metric):
    def __init__(self):
        self.add_state("preds", [], reduce="cat")
        self.add_state("targets", [], reduce="cat")

    def update(self, pred, target, mask) -> None:
        p, y = _select(pred, target, mask)
        self.preds.append(p)
        self.targets.append(y)

    def arrays(self):
        if not self.preds:
            return None, None
        return (torch.cat(self.preds).float().cpu().numpy(), torch.cat(self.targets).float().cpu().numpy())


class AUC(_Collect):
    name, higher_is_better = "auc", True

    def compute(self) -> float:
        from sklearn.metrics import roc_auc_score

        p, y = self.arrays()
        if p is None or len(set((y > 0.5).tolist())) < 2:
            return float("nan")
        return float(roc_auc_score(y > 0.5, p))


class BinaryAccuracy(Metric):
    name, higher_is_better = "accuracy", True

    def __init__(self):
        self.add_state("hits", torch.zeros(2, dtype=torch.long))

    def update(self, pred, target, mask) -> None:
        p, y = _select(pred, target, mask)
        self.hits = self.hits + torch.stack([((p > 0) == (y > 0.5)).sum(), torch.ones_like(y).sum().long()])

    def compute(self) -> float:
        if int(self.hits[1]) == 0:
            return float("nan")
        c, n = self.hits.tolist()
        return c / n


class RegressionTask(Task):
    """MSE on (standardised) targets; rmse ↓, mae ↓, explained_variance ↑ on the original scale."""

    kind = "regression"

    def __init__(self, name: str, y_mean: float = 0.0, y_std: float = 1.0, head_hidden: int = 0,
                 metrics: Optional[List[str]] = None):
        super().__init__(name)
        self.y_mean, self.y_std, self.head_hidden = float(y_mean), float(y_std), head_hidden
        known = {"rmse": RMSE, "mae": MAE, "explained_variance": ExplainedVariance}
        self.metric_names = list(metrics or known)
        bad = [m for m in self.metric_names if m not in known]
        if bad:
            raise ValueError(f"regression task '{name}': unknown metric(s) {bad}; known: {', '.join(known)}")
        self._known = known

    def loss(self, pred, target, mask=None):
        return masked_mean((_flat(pred) - target.to(pred.dtype)) ** 2, mask)

    def metrics(self):
        return [self._known[m](self.y_mean, self.y_std) for m in self.metric_names]

    def make_head(self, in_channels, **options):
        return ScalarHead(in_channels, self.head_hidden)


class BinaryTask(Task):
    """Binary cross-entropy on logits (targets 0/1); auc ↑, accuracy ↑."""

    kind = "binary"

    def __init__(self, name: str, head_hidden: int = 0, pos_weight: Optional[float] = None):
        super().__init__(name)
        self.head_hidden = head_hidden
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def loss(self, pred, target, mask=None):
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=pred.device)
        per = F.binary_cross_entropy_with_logits(_flat(pred), target.to(pred.dtype), reduction="none",
                                                 pos_weight=pw)
        return masked_mean(per, mask)

    def metrics(self):
        return [AUC(), BinaryAccuracy()]

    def make_head(self, in_channels, **options):
        return ScalarHead(in_channels, self.head_hidden)
