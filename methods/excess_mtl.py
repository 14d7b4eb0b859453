"""ExcessMTL (He, Zhou, Zhao, Wang & Gao, "Robust Multi-Task Learning with Excess Risks",
ICML 2024; the authors' code: yifei-he/ExcessMTL LibMTL/LibMTL/weighting/ExcessMTL.py, the
same as LibMTL/weighting/ExcessMTL.py).

Task weights follow each task's *excess* risk (its distance to its own optimum) rather than
its loss, so a task with high irreducible noise does not take over. The excess risk of task i
is estimated from a diagonal (Adagrad-style) second-order approximation of its loss:

    S_i ← S_i + g_i ⊙ g_i                 (accumulated over all steps)
    e_i = Σ_j g_ij² / √(S_ij + 1e-7)

At the first step e_i is recorded as e_i⁰ and the weights stay 1; afterwards they take an
exponentiated-gradient (mirror ascent) step on the normalised excess risk and are rescaled to
sum to T:

    p_i ← p_i · exp(η · e_i / e_i⁰),   p ← T · p / Σ_j p_j

and the update is the gradient of Σ_i p_i L_i (shared and task-specific parameters alike, as
the reference back-propagates it). Default: ``robust_step_size`` η = 1e-2 (the reference's).
Gradients of the shared parameters (``mode: parameters``; S_i is a [T, D] float32 tensor,
kept for exact resume). The reference's representation variant sums per-sample
representation gradients over the batch; it is not offered (the base's representation
gradients are per sample, so S would change shape with the batch size).

Deviation (absent tasks): a task absent from a batch keeps S_i and p_i; its e_i⁰ is recorded
at its first present step; the normalisation to sum T runs over all tasks whenever a present
task's weight moves.

Logged per epoch: the mean weights p (``weights()``) and the base's cosine statistics.
"""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS


@BALANCERS.register("excess_mtl")
class ExcessMTL(GradientBalancer):
    """``robust_step_size`` (1e-2): η; ``mode``: parameters only."""

    modes = ("parameters",)
    state_fields = GradientBalancer.state_fields + ("_grad_sq",)

    def __init__(self, task_names, robust_step_size: float = 1e-2, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if not float(robust_step_size) >= 0:
            raise ValueError(f"balancer.robust_step_size must be >= 0 (got {robust_step_size})")
        self.robust_step_size = float(robust_step_size)
        k = len(self.task_names)
        self.register_buffer("loss_weight", torch.ones(k))
        self.register_buffer("initial_excess", torch.full((k,), float("nan")))
        self._grad_sq = None  # [T, D] accumulated squared gradients, created at the first step

    def aggregate(self, grads, losses):
        idx = self.active_index
        if self._grad_sq is None or self._grad_sq.shape[1] != grads.shape[1]:
            self._grad_sq = torch.zeros(len(self.task_names), grads.shape[1], dtype=torch.float32, device=grads.device)
        self._grad_sq = self._grad_sq.to(grads.device)
        acc = self._grad_sq[idx] + grads * grads
        self._grad_sq[idx] = acc
        excess = (grads * grads / torch.sqrt(acc + 1e-7)).sum(dim=1)
        init = self.initial_excess[idx]
        seen = ~torch.isnan(init)
        self.initial_excess[idx] = torch.where(seen, init, excess)
        if bool(seen.any()):  # the reference: no update at the first step
            ratio = torch.where(seen, excess / init, torch.zeros_like(excess))
            self.loss_weight[idx] = self.loss_weight[idx] * torch.exp(ratio * self.robust_step_size)
            self.loss_weight.mul_(len(self.task_names) / self.loss_weight.sum())
        w = self.loss_weight[idx].to(grads.dtype)
        return w @ grads, w
