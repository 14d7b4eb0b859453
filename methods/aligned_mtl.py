"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
CVPR 2023; the authors' code: SamsungLabs/MTL ``code/optim/aligned/solver.py``
``ProcrustesSolver`` and ``balancer.py`` ``AlignedMTLBalancer`` / ``AlignedMTLUBBalancer``;
also LibMTL/weighting/Aligned_MTL.py).

The task gradients G ([T, D], rows g_i) are replaced by the closest (Procrustes) matrix with
orthogonal rows of equal norm, so that no task dominates and none conflicts:

    M = G Gᵀ = V Λ Vᵀ   (eigen-decomposition; eigenvalues λ_1 ≥ ... ≥ λ_r > tol, r = rank)
    B = √λ_min · V Λ^{-1/2} Vᵀ          (``scale_mode: min``, the default; ``median``: the
                                           median eigenvalue; ``rmse``: their mean)
    Ĝ = Bᵀ G,   d = Σ_i ĝ_i = Gᵀ (B 1)

with tol = λ_max · T · ε_float32 (the authors' rank threshold). Then Ĝ Ĝᵀ = λ_min · I on the
span of the gradients: every aligned gradient has the same norm √λ_min and they are mutually
orthogonal (equal "eigen-contributions", the condition number of the system is 1). The
per-task weights are α = B 1 (d = Σ_i α_i g_i).

Modes (``mode``): ``parameters`` (Aligned-MTL, gradients of the shared parameters; the
default, as the paper's main method) or ``representation`` (the paper's Aligned-MTL-UB,
gradients of the shared representation, back-propagated through the encoder).
Task-specific parameters: each keeps its own loss's unweighted gradient, as the authors'
default (``scale_decoder_grad=False``); ``scale_heads: true`` weights them by α as their
option does.

Deviations: the eigen-decomposition is computed in float64 (``torch.linalg.eigh``; the
authors' ``torch.symeig`` in float32 no longer exists) with their float32 rank threshold.
Absent tasks are left out of G. No hyper-parameter besides ``scale_mode``.

Logged per epoch: ``weights()`` (1 per present task unless ``scale_heads``), and in
``balancer``: the mean α per task (``alpha``) and the mean rank r over the steps, with the
mode and the gradient cosine statistics of the base.
"""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS

SCALE_MODES = ("min", "median", "rmse")


def alignment_weights(gram: torch.Tensor, scale_mode: str = "min"):
    """(the balance matrix B [T, T] of a Gram matrix G Gᵀ (aligned gradients: Ĝ = Bᵀ G), the
    rank r kept)."""
    m = gram.double()
    lam, vec = torch.linalg.eigh(m)
    tol = lam.max() * len(m) * torch.finfo(torch.float32).eps
    keep = lam > tol
    if not bool(keep.any()):
        return torch.eye(len(m), dtype=m.dtype, device=m.device), 0
    order = torch.argsort(lam[keep], descending=True)
    lam, vec = lam[keep][order], vec[:, keep][:, order]
    scale = {"min": lambda: lam[-1], "median": lambda: torch.median(lam), "rmse": lambda: lam.mean()}[scale_mode]()
    return scale.sqrt() * (vec / lam.sqrt()) @ vec.T, len(lam)


@BALANCERS.register("aligned_mtl")
class AlignedMTL(GradientBalancer):
    """``scale_mode``: min | median | rmse (min); ``scale_heads`` (false); ``mode``:
    parameters (Aligned-MTL) | representation (Aligned-MTL-UB)."""


    def __init__(self, task_names, scale_mode: str = "min", scale_heads: bool = False, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"balancer.scale_mode must be one of {list(SCALE_MODES)} (got {scale_mode!r})")
        self.scale_mode, self.scale_heads = scale_mode, bool(scale_heads)
        k = len(self.task_names)
        self.register_buffer("alpha_sum", torch.zeros(k))
        self.register_buffer("rank_sum", torch.zeros(()))

    def aggregate(self, grads, losses):
        b, rank = alignment_weights(grads @ grads.T, self.scale_mode)
        alpha = b.sum(1).to(grads.dtype)
        self.alpha_sum.index_add_(0, self.active_index, alpha)
        self.rank_sum += rank
        return alpha @ grads, (alpha if self.scale_heads else None)

    def epoch_end(self, train_losses):
        steps = float(self.steps)
        state = super().epoch_end(train_losses)
        if steps:
            state.update(alpha=dict(zip(self.task_names, (self.alpha_sum / steps).tolist())),
                         mean_rank=float(self.rank_sum) / steps)
        self.alpha_sum.zero_()
        self.rank_sum.zero_()
        return state
