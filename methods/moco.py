"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023; the reference followed:
LibMTL/weighting/MoCo.py, "implemented based on the author's sharing code"; the authors'
repository heshandevaka/MoCo, CAGrad/utils.py ``tracking`` with ``smgdc_method raw_loss``,
applies the same update).

Stochastic MGDA with a tracking variable y_i per task (an exponential average of the task's
gradient, which removes MGDA's bias under stochastic gradients) and simplex weights λ. At step
t (from 1), with the task gradients g_i of the shared parameters and the losses L_i:

    h_i = g_i / (‖g_i‖ + 1e-8) · L_i                       (normalised by the loss)
    y_i ← y_i − β_t (y_i − h_i),                  β_t = β / t^{σ_β}
    λ  ← softmax(λ − γ_t (Y Yᵀ + ρ I) λ),         γ_t = γ / t^{σ_γ}
    d  = Yᵀ λ = Σ_i λ_i y_i

with y = 0 and λ = 1/T at the start. Defaults: LibMTL's (``beta=0.5``, ``beta_sigma=0.5``,
``gamma=0.1``, ``gamma_sigma=0.5``, ``rho=0``). Gradients of the shared parameters (``mode:
parameters``), as LibMTL and the authors (both refuse representation gradients). Memory: Y is
a [T, D] float32 tensor over the D shared parameters (kept for exact resume).

Deviations:

* Task-specific parameters get Σ_i λ_i β_t L_i/(‖g_i‖ + 1e-8) ∇L_i: each head is weighted as
  its task's current gradient is in d (the rest of d is the tracked history). LibMTL and the
  authors give each head its own loss's unweighted gradient; with these weights the whole
  model moves along one weighted loss on the first step, which the balancer contract checks.
* The authors' Cityscapes/NYUv2 script decays β and γ with the epoch index and multiplies d
  by T; LibMTL (followed here) decays with the step count and does not.
* Absent tasks: their y_i is not updated and their λ is kept; the present tasks' λ are
  updated on their own simplex (``mtlbench.methods._pareto``).

Logged per epoch: the mean head weights (``weights()``), and in ``balancer`` the mean λ.
"""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS
from mtlbench.methods._pareto import put_back, restrict


@BALANCERS.register("moco")
class MoCo(GradientBalancer):
    """``beta`` (0.5), ``beta_sigma`` (0.5): y's step size β/t^σ; ``gamma`` (0.1),
    ``gamma_sigma`` (0.5): λ's step size; ``rho`` (0): λ's l2 regulariser; ``mode``:
    parameters only."""

    modes = ("parameters",)
    state_fields = GradientBalancer.state_fields + ("_y",)

    def __init__(self, task_names, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                 gamma_sigma: float = 0.5, rho: float = 0.0, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if not (0 < float(beta) <= 1) or not float(gamma) > 0 or float(rho) < 0:
            raise ValueError(f"balancer.beta must be in (0, 1], balancer.gamma > 0, balancer.rho >= 0 "
                             f"(got {beta}, {gamma}, {rho})")
        self.beta, self.beta_sigma, self.gamma = float(beta), float(beta_sigma), float(gamma)
        self.gamma_sigma, self.rho = float(gamma_sigma), float(rho)
        k = len(self.task_names)
        self.register_buffer("lambd", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("lambd_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._y = None  # [T, D] tracking variables, created at the first step

    def aggregate(self, grads, losses):
        idx = self.active_index
        self.step += 1
        t = float(self.step)
        if self._y is None or self._y.shape[1] != grads.shape[1]:
            self._y = torch.zeros(len(self.task_names), grads.shape[1], dtype=torch.float32, device=grads.device)
        self._y = self._y.to(grads.device)
        scale = losses / (grads.norm(dim=1) + 1e-8)
        beta_t = self.beta / t ** self.beta_sigma
        y = self._y[idx]
        y = y - beta_t * (y - grads * scale[:, None])
        self._y[idx] = y
        lam, mass = restrict(self.lambd, idx)
        yy = (y @ y.T).double()
        lam = torch.softmax(lam - self.gamma / t ** self.gamma_sigma * (yy + self.rho * torch.eye(len(lam), dtype=yy.dtype,
                                                                                                    device=yy.device)) @ lam, 0)
        put_back(self.lambd, idx, lam, mass)
        self.lambd_sum.index_add_(0, idx, lam)
        lam = lam.to(grads.dtype)
        return lam @ y, lam * beta_t * scale

    def epoch_end(self, train_losses):
        steps = float(self.steps)
        state = super().epoch_end(train_losses)
        if steps:
            state["lambda"] = dict(zip(self.task_names, (self.lambd_sum / steps).tolist()))
        self.lambd_sum.zero_()
        return state
