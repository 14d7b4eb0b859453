"""Gradient Vaccine (GradVac; Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021). The authors
published no code; compared with LibMTL ``LibMTL/weighting/GradVac.py``.

PCGrad only acts when two gradients conflict (cosine < 0); GradVac sets, per ordered task pair
(i, j), an adaptive similarity target φ̂_ij, an exponential moving average of the observed
cosine (φ̂ ← (1−β) φ̂ + β φ, from 0), and whenever the current cosine φ_ij of g_i^V and g_j
falls below it, adds the multiple of g_j that lifts the cosine exactly to φ̂_ij:

    g_i^V ← g_i^V + g_j · ‖g_i^V‖ (φ̂_ij √(1−φ_ij²) − φ_ij √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²))

for each task i (g_i^V = g_i at start), over the other tasks j in a random order; the EMA is
updated for every pair with the φ_ij just observed. The update is Σ_i g_i^V. Heads: each head
its own loss's gradient (weight 1).

Defaults: β = 0.5 (``beta``; LibMTL's default) and one group for the whole shared part
(LibMTL's default ``group_type = 0``, "whole model"; the per-layer and per-matrix groupings
of the paper's ablation are not offered here). The 1e-8 guards in the denominators follow
LibMTL.

Computed in coefficient space (g_i^V = Σ_k B_ik g_k, cosines and norms from the T×T Gram
matrix on the host in float64, one device→host copy per step), as ``pcgrad``. The random
order comes from the balancer's own generator (a state field, seeded from the run's seed);
φ̂ is a [T, T] buffer (checkpointed).

Deviation: a task absent from the batch is left out, and its φ̂ entries are not updated.

Mode: ``parameters`` (default, as LibMTL) or ``representation``. DDP: ``distributed =
False``. Logged: ``weights()`` = epoch-mean coefficient of each g_k in the update;
``epoch_end`` → the mean target φ̂ over pairs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._combination import CombinationBalancer, host_gram
from mtlbench.methods._loss_weighting import positive_float, run_generator


def gradvac_coefficients(gram: np.ndarray, target: np.ndarray, orders, beta: float):
    """(B with g_i^V = Σ_k B_ik g_k, the updated targets φ̂) for the Gram matrix, the targets
    [T, T] and per task i the order of the tasks j."""
    t = gram.shape[0]
    coef, target = np.eye(t), target.copy()
    for i in range(t):
        for j in orders[i]:
            if j == i:
                continue
            norm_i = math.sqrt(max(float(coef[i] @ gram @ coef[i]), 0.0))
            norm_j = math.sqrt(gram[j, j])
            phi = float(coef[i] @ gram[:, j]) / (norm_i * norm_j + 1e-8)
            goal = target[i, j]
            if phi < goal:
                coef[i, j] += norm_i * (goal * math.sqrt(max(1 - phi ** 2, 0.0)) - phi * math.sqrt(1 - goal ** 2)) \
                    / (norm_j * math.sqrt(1 - goal ** 2) + 1e-8)
            target[i, j] = (1 - beta) * goal + beta * phi
    return coef, target


@BALANCERS.register("gradvac")
class GradVac(CombinationBalancer):
    """``beta``: the EMA factor of the similarity targets (0.5); ``mode``: parameters |
    representation."""

    state_fields = CombinationBalancer.state_fields + ("generator",)

    def __init__(self, task_names, beta: float = 0.5, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.beta = positive_float("beta", beta)
        if self.beta > 1:
            raise ValueError(f"balancer.beta must be in (0, 1] (got {beta!r})")
        k = len(self.task_names)
        self.register_buffer("target", torch.zeros(k, k))
        self.generator = run_generator()

    def aggregate(self, grads, losses):
        idx = self.active_index
        sub = self.target[idx][:, idx]
        gram, target = host_gram(grads, sub)
        t = len(gram)
        orders = [torch.randperm(t, generator=self.generator).tolist() for _ in range(t)]
        coef, target = gradvac_coefficients(gram, target, orders, self.beta)
        new = torch.as_tensor(target, dtype=self.target.dtype).to(self.target.device)
        self.target[idx.unsqueeze(1), idx.unsqueeze(0)] = new
        return self.combine_rows(coef.sum(0), grads), None

    def epoch_end(self, train_losses):
        state = super().epoch_end(train_losses)
        k = len(self.task_names)
        if k > 1:
            off = self.target[~torch.eye(k, dtype=torch.bool, device=self.target.device)]
            state["mean_target"] = float(off.mean())
        return state
