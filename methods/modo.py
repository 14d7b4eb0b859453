"""MoDo (Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023; the reference followed:
LibMTL/weighting/MoDo.py with its trainer, LibMTL/trainer.py; the authors' work-in-progress
code: heshandevaka/Trade-Off-MOL LibMTL/LibMTL/weighting/MoDo.py).

Multi-objective gradient descent with double sampling: a weight vector λ on the simplex is
moved by one projected gradient step on ½‖Gᵀλ‖² + ½ρ‖λ‖² per training step, and the model
follows the λ-weighted gradient:

    λ ← Π_Δ(λ − γ (G₁ G₂ᵀ λ + ρ λ)),    d = G₃ᵀ λ

where G₁, G₂, G₃ are the task gradients (rows) on three independent batches in the paper
(Alg. 1) and in LibMTL (its trainer draws three batches per step for MoDo). λ starts at 1/T.
Defaults: LibMTL's ``gamma=1e-3``, ``rho=0.1`` (the authors' two-sample draft used
γ = 0.1). Gradients of the shared parameters (``mode: parameters``), as LibMTL, which refuses
representation gradients for MoDo.

Deviations:

* One batch per step: mtlbench's trainer gives a balancer one batch and the balancer does not
  change that, so G₁ = G₂ = G₃ = G, the batch's gradients; the update of λ then uses the
  biased estimate G Gᵀ λ of the paper's unbiased one (the double sampling is what MoDo's
  analysis needs; the update rule is the same).
* Task-specific parameters get Σ_i λ_i ∇L_i, where LibMTL gives each head the mean of its
  own loss's unweighted gradients over the three batches: the whole model then moves along
  one weighted loss, which the balancer contract checks.
* Absent tasks are left out; the present tasks' λ are updated on their own simplex and keep
  the mass they held (``mtlbench.methods._pareto``).

Logged per epoch: the mean λ (``weights()``) and the base's cosine statistics.
"""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS
from mtlbench.methods._pareto import project_simplex, put_back, restrict


@BALANCERS.register("modo")
class MoDo(GradientBalancer):
    """``gamma`` (1e-3): λ's step size; ``rho`` (0.1): its l2 regulariser; ``mode``:
    parameters only."""

    modes = ("parameters",)

    def __init__(self, task_names, gamma: float = 1e-3, rho: float = 0.1, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if not float(gamma) > 0 or float(rho) < 0:
            raise ValueError(f"balancer.gamma must be > 0 and balancer.rho >= 0 (got {gamma}, {rho})")
        self.gamma, self.rho = float(gamma), float(rho)
        k = len(self.task_names)
        self.register_buffer("lambd", torch.full((k,), 1.0 / k, dtype=torch.float64))

    def aggregate(self, grads, losses):
        idx = self.active_index
        lam, mass = restrict(self.lambd, idx)
        g = grads.double()
        lam = project_simplex(lam - self.gamma * (g @ (g.T @ lam) + self.rho * lam))
        put_back(self.lambd, idx, lam, mass)
        w = lam.to(grads.dtype)
        return w @ grads, w
