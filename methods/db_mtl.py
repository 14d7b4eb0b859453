"""DB-MTL, dual balancing (Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv
2308.12029, 2023). Reference code: LibMTL
``LibMTL/weighting/DB_MTL.py`` (by the authors), defaults from ``LibMTL/config.py``.

Two balancings:

* loss scale: every task trains on log(L_k + ε) (ε = 1e-8), whose gradient ∇L_k/(L_k + ε)
  does not depend on the loss's unit;
* gradient magnitude: an exponential moving average of each task's log-loss gradient,
  ĝ_k ← g_k + β_t (ĝ_k − g_k) with β_t = β / t^σ (t: the step, from 1; ĝ starts at 0;
  bias-corrected, see below), then every task is rescaled to the largest norm:

      d = Σ_k α_k ĝ_k,   α_k = max_j ‖ĝ_j‖ / (‖ĝ_k‖ + ε).

Defaults: β = 0.9 (``beta``), σ = 0 (``beta_sigma``: a constant β), the authors' LibMTL
defaults. Heads: each task's head gets its log-loss gradient, weight 1/(L_k + ε) (as the
reference, where only the shared gradients are replaced).

Mode: ``parameters`` only (the gradients of the shared parameters, as the reference, which
refuses representation gradients: an EMA of per-sample representation gradients across
different batches has no meaning). Cost: the T gradient passes of ``GradientBalancer`` and
a [T, D] float32 EMA buffer (D = number of shared parameters), kept as a declared state field
(created at the first step, so its size follows the model).

Deviations: the EMA is bias-corrected as Adam's moments are, ĝ_k / (1 − Π_{s≤t} β_s): with
its zero start, the reference's shared gradient is (1 − β) = 0.1x the heads' at step 1,
0.19x at step 2, ... (a warm-up the paper does not describe) and identical tasks would not
give equal weighting's update; with σ = 0 the correction fades as 1 − 0.9^t. A task absent
from the batch keeps its EMA row unchanged for that step and is left out of the max and the
sum (the reference would fold a zero gradient into the EMA).
DDP: ``distributed = False``. Logged: ``weights()`` = the epoch-mean α_k.
"""
from __future__ import annotations

from typing import Optional

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._combination import CombinationBalancer
from mtlbench.methods._loss_weighting import positive_float

EPS = 1e-8


@BALANCERS.register("db_mtl")
class DBMTL(CombinationBalancer):
    """``beta``: the EMA factor β (0.9); ``beta_sigma``: its decay exponent σ, β_t = β/t^σ (0);
    ``mode``: parameters."""

    modes = ("parameters",)
    state_fields = CombinationBalancer.state_fields + ("_ema",)

    def __init__(self, task_names, beta: float = 0.9, beta_sigma: float = 0.0, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.beta = positive_float("beta", beta, allow_zero=True)
        if self.beta >= 1:
            raise ValueError(f"balancer.beta must be in [0, 1) (got {beta!r})")
        self.beta_sigma = positive_float("beta_sigma", beta_sigma, allow_zero=True)
        self.register_buffer("ema_step", torch.zeros(()))
        self.register_buffer("beta_prod", torch.ones((), dtype=torch.float64))  # Π_s β_s (the EMA's bias)
        self._ema: Optional[torch.Tensor] = None

    def aggregate(self, grads, losses):
        idx = self.active_index
        g = grads / (losses + EPS).unsqueeze(1)                  # ∇ log(L + ε)
        self.ema_step += 1
        beta = self.beta / self.ema_step.double() ** self.beta_sigma
        self.beta_prod *= beta
        unbias = (1 - self.beta_prod).float().to(g.device)
        beta = beta.float().to(g.device)
        shape = (len(self.task_names), g.shape[1])
        if self._ema is None or tuple(self._ema.shape) != shape:
            self._ema = torch.zeros(shape, device=g.device)
        elif self._ema.device != g.device:
            self._ema = self._ema.to(g.device)
        if len(idx) == shape[0]:                                  # every task present: in place
            rows = self._ema.lerp_(g, 1 - beta)                   # g + β (ĝ − g)
        else:
            rows = torch.lerp(g, self._ema[idx], beta)
            self._ema.index_copy_(0, idx, rows)
        norms = rows.norm(dim=1) / unbias
        alpha = norms.max() / (norms + EPS)
        self.note(alpha)
        return (alpha / unbias) @ rows, 1.0 / (losses + EPS)
