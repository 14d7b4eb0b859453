"""IMTL, impartial multi-task learning (Liu et al., "Towards Impartial Multi-task Learning",
ICLR 2021). The authors published no code;
compared with LibMTL ``LibMTL/weighting/IMTL.py`` (IMTL-H) and Nash-MTL's
``methods/weight_methods.py`` (class ``IMTLG``).

* IMTL-G (gradient balance): the shared update g = Σ_k α_k g_k (Σ α = 1) with EQUAL
  projections on every unit task gradient u_k = g_k/‖g_k‖: g·u_1 = g·u_k for all k. In
  closed form, with D = [g_1 − g_k]_{k≥2} and U = [u_1 − u_k]_{k≥2}:
  α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ_{k≥2} α_k.
* IMTL-L (loss balance): each loss is scaled by a learnable e^{s_k} and regularised,
  e^{s_k} L_k − s_k (s = 0 at start, trained with the model's optimiser: the balancer's
  parameter group), which drives e^{s_k} L_k towards 1: scaled losses of equal size.
* IMTL-H (``variant: hybrid``, the paper's full method and the default): IMTL-G on the
  gradients of the IMTL-L-scaled losses. ``variant: gradient`` = IMTL-G on the raw losses;
  ``variant: loss`` = IMTL-L with the plain sum of the scaled gradients.

Heads: each head the gradient of its (scaled) loss, weight 1, as in the paper and LibMTL
(Nash-MTL's IMTLG weights the heads by α too).

Scale (a deviation): the shared update is K·Σ_k α_k g_k, i.e. α summing to K where the paper
and LibMTL sum to 1. It is a constant factor K on the shared gradient only (Adam ignores it;
for SGD it is a shared-part learning rate) and keeps the shared/heads balance of equal
weighting (K losses summed): with Σ α = 1 the shared part would get 1/K of the heads'
relative step, and identical tasks would not give equal weighting's update (the property
every balancer here keeps). The same "to match the sum loss" factor CAGrad's authors apply.

Solver: the conditions g·u_k = λ for all k and Σ α = 1 are one (K+1)×(K+1) linear system in
(α, λ) built from the Gram matrix (M_kj = u_k·g_j); solved by least squares in float64 on the
host (one device→host copy per step). When D Uᵀ is invertible this is exactly the closed
form above; when it is singular (e.g. identical task gradients, where every α gives the
same g) the minimum-norm solution is taken (uniform α for identical gradients), where
LibMTL's ``torch.inverse`` fails and Nash-MTL adds 1e-8·I.

Mode: ``representation`` (default: the paper computes the IMTL-G gradients w.r.t. the shared
feature z, as MGDA-UB does; here z's per-sample gradients flattened, where LibMTL's
representation mode sums them over the batch) or ``parameters`` (LibMTL's default).

Deviations: a task absent from the batch is left out of α and its s_k gets no gradient
(LibMTL would move it by the regulariser's −1). The gradient of s_k, e^{s_k} L_k − 1, is
written directly (the T gradient passes do not reach s). DDP: ``distributed = False``.
Logged: ``weights()`` = the epoch-mean K·α (ones for ``variant: loss``); ``epoch_end`` → the
loss scales e^{s_k}.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._combination import CombinationBalancer, host_gram

VARIANTS = ("hybrid", "gradient", "loss")


def imtl_g_weights(gram: np.ndarray) -> np.ndarray:
    """α (Σ α = 1) whose combination has equal projections on every unit task gradient."""
    t = gram.shape[0]
    if t == 1:
        return np.ones(1)
    norms = np.sqrt(np.clip(np.diag(gram), 1e-300, None))
    system = np.zeros((t + 1, t + 1))
    system[:t, :t] = gram / norms[:, None]          # M_kj = u_k · g_j
    system[:t, t] = -1.0
    system[t, :t] = 1.0
    rhs = np.zeros(t + 1)
    rhs[t] = 1.0
    sol = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return sol[:t]


@BALANCERS.register("imtl")
class IMTL(CombinationBalancer):
    """``variant``: hybrid (IMTL-H) | gradient (IMTL-G) | loss (IMTL-L); ``mode``:
    representation | parameters."""

    def __init__(self, task_names, variant: str = "hybrid", mode: str = "representation"):
        super().__init__(task_names, mode=mode)
        if variant not in VARIANTS:
            raise ValueError(f"balancer.variant must be one of {list(VARIANTS)} (got {variant!r})")
        self.variant = variant
        self.scales_loss = variant in ("hybrid", "loss")
        if self.scales_loss:
            self.log_scale = nn.Parameter(torch.zeros(len(self.task_names)))

    def backward(self, losses, ctx):
        if not self.scales_loss:
            return super().backward(losses, ctx)
        s = self.log_scale
        scale = torch.exp(s.detach())
        scaled = {t: losses[t] * scale[i].to(losses[t].dtype) for i, t in enumerate(self.task_names)}
        out = super().backward(scaled, ctx)
        raw = torch.stack([losses[t].detach().float() for t in self.task_names])
        grad = torch.where(raw != 0, scale * raw - 1.0, 0.0)   # ∂(e^s L − s)/∂s
        s.grad = (grad * ctx.scale()).to(s.dtype)
        return out

    def aggregate(self, grads, losses):
        if self.variant == "loss":
            return self.combine_rows(np.ones(len(grads)), grads), None
        (gram,) = host_gram(grads)
        return self.combine_rows(len(gram) * imtl_g_weights(gram), grads), None

    def epoch_end(self, train_losses):
        state = super().epoch_end(train_losses)
        if self.scales_loss:
            state["loss_scale"] = dict(zip(self.task_names, torch.exp(self.log_scale.detach()).tolist()))
        return state
