"""Geometric Loss Strategy (GLS; Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++:
Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
CVPR Workshops 2019). Reference code: LibMTL ``LibMTL/weighting/GLS.py`` (the authors
published none).

    L_GLS = (Π_{k=1..K} L_k)^{1/K}

the geometric mean of the task losses: scale-free (multiplying one task's loss by a constant
multiplies L_GLS by a constant, so the relative weighting of tasks does not depend on their
units). Its gradient is Σ_k w_k ∇L_k with w_k = L_GLS / (K·L_k): a task with a small loss
gets a large weight. No hyper-parameter.

Mode: none (a loss-scale method: one backward pass, no per-task gradients).
DDP: ``distributed = False`` (the geometric mean of one rank's losses is not that of the
global batch; refused under torchrun with one line).

Deviations (numerically equal otherwise): computed in the log domain, exp(mean_k log L_k),
so that many tasks (Landmine's 29, School's 139) neither underflow nor overflow the product
as LibMTL's ``losses.prod()`` would; a task absent from the batch (loss exactly 0, which
would make the product 0 and stop every task) is left out: the geometric mean is over the
tasks present. Losses must be positive (every built-in task loss is ≥ 0; exactly 0 means
absent). Logged: ``weights()`` = the epoch-mean w_k.
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import LossWeighting


@BALANCERS.register("gls")
class GLS(LossWeighting):
    """(Π_k L_k)^{1/K} over the tasks present in the batch; no keys."""

    def loss_weights(self, losses, present, ctx):
        cur = losses.detach()
        n = present.sum().clamp_min(1)
        log_l = torch.where(present, cur.clamp_min(torch.finfo(cur.dtype).tiny).log(), 0.0)
        geo = torch.exp(log_l.sum() / n)
        return torch.where(present, geo / (n * cur), 0.0)

    def initial_weights(self):
        return {t: 1.0 / len(self.task_names) for t in self.task_names}
