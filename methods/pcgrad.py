"""PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020; Algorithm 1). Reference code: the
authors' tianheyu927/PCGrad ``PCGrad_tf.py``, LibMTL ``LibMTL/weighting/PCGrad.py`` and
Nash-MTL's ``methods/weight_methods.py`` (class ``PCGrad``).

For each task i (copy g_i^PC = g_i), for each other task j in a random order: if
g_i^PC · g_j < 0, remove the conflicting component, g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j
(projection on the normal plane of the ORIGINAL g_j). The update is the sum Σ_i g_i^PC (the
authors' TF code and LibMTL sum; Nash-MTL's ``reduction`` defaults to sum too). No
hyper-parameter. Heads: each head its own loss's gradient (weight 1).

Computed in coefficient space: every g_i^PC is a combination Σ_k B_ik g_k, so the projections
only need the T×T Gram matrix (one matmul; float64 on the host, one device→host copy per
step) and the update is d = (1ᵀB) G: the same arithmetic as projecting the D-vectors, with
the T² projections on scalars instead of T² dot products of D-vectors (each a host sync in
the references' ``if g_ij < 0``).

Random order: one permutation of the other tasks per i and per step, from the balancer's
own ``torch.Generator`` (a state field; seeded from torch's global RNG when built, i.e. from
the run's seed). The authors' TF code draws no new order (its ``tf.random.shuffle`` result
is unused); LibMTL and Nash-MTL use Python's global ``random``.

Deviations: j runs over the other tasks only (the paper; LibMTL also projects g_i^PC on its
own g_i, which matters only if g_i^PC · g_i < 0); no 1e-8 in ‖g_j‖² (an active task has
g_j ≠ 0).

Mode: ``parameters`` (default, the paper: all shared parameters) or ``representation``
(the per-sample gradients of the shared representation, flattened). DDP: ``distributed =
False``. Logged: ``weights()`` = the epoch-mean coefficient of each g_k in d (1 when no pair
conflicts), and the base's mean cosine / conflict fraction.
"""
from __future__ import annotations

import numpy as np
import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._combination import CombinationBalancer, host_gram
from mtlbench.methods._loss_weighting import run_generator


def pcgrad_coefficients(gram: np.ndarray, orders) -> np.ndarray:
    """B with g_i^PC = Σ_k B_ik g_k, given the Gram matrix and, per task i, the order of the
    tasks j to project on."""
    t = gram.shape[0]
    coef = np.eye(t)
    for i in range(t):
        for j in orders[i]:
            if j == i:
                continue
            dot = float(coef[i] @ gram[:, j])
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
    return coef


@BALANCERS.register("pcgrad")
class PCGrad(CombinationBalancer):
    """``mode``: parameters (default) | representation."""

    state_fields = CombinationBalancer.state_fields + ("generator",)

    def __init__(self, task_names, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.generator = run_generator()

    def orders(self, t: int):
        return [torch.randperm(t, generator=self.generator).tolist() for _ in range(t)]

    def aggregate(self, grads, losses):
        (gram,) = host_gram(grads)
        coef = pcgrad_coefficients(gram, self.orders(len(gram))).sum(0)
        return self.combine_rows(coef, grads), None
