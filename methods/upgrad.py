"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
arXiv:2406.16232; the authors' code: TorchJD/torchjd ``src/torchjd/aggregation/_upgrad.py``
and ``_utils/dual_cone.py``; also LibMTL/weighting/UPGrad.py, adapted from it).

UPGrad aggregates the Jacobian J (the task gradients as rows, [T, D]) by projecting every row
onto the dual cone of the rows, C = {x : J x ≥ 0} (the directions that increase no loss to
first order), and averaging the projections:

    d = (1/T) Σ_i π_C(g_i) = Jᵀ w,   w = Σ_i v⁽ⁱ⁾,   v⁽ⁱ⁾ = argmin_{v ≥ e_i / T} vᵀ 𝒢 v

(their Proposition 1: π_C(Jᵀu) = Jᵀv with v the solution of this quadratic programme). Here
𝒢 = J Jᵀ / tr(J Jᵀ) + ``reg_eps``·I (the Gramian normalised by the squared Frobenius norm of
J, then regularised so it is positive definite; a Gramian of trace below ``norm_eps`` becomes
0), exactly as the reference. Defaults: the reference's ``norm_eps=1e-4``, ``reg_eps=1e-4``
and the mean preference vector (1/T each). Since every projection lies in C, so does d:
⟨g_i, d⟩ ≥ 0 for every task (exactly for ``reg_eps=0``, up to reg_eps·‖v‖ otherwise); d = the
mean gradient when no pair of tasks conflicts.

The quadratic programmes: the reference calls quadprog through qpsolvers (not a dependency
here); this implementation solves the same programme exactly as a non-negative least-squares
problem (Lawson-Hanson, ``scipy.optimize.nnls``): with 𝒢 = L Lᵀ (Cholesky) and v = u + x,
min_{x ≥ 0} ‖Lᵀ x + Lᵀ u‖². tests/test_balancers_pareto.py checks the result against an
exhaustive solution of the programme's KKT conditions (every active set) on random inputs.

Modes (``mode``): ``parameters`` (the default: the Jacobian of the shared parameters, as
torchjd's ``mtl_backward`` and LibMTL) or ``representation`` (the Jacobian of the shared
representation). Deviation: task-specific parameters get Σ_i w_i ∇L_i (the weights of the
shared update), where torchjd's ``mtl_backward`` gives each its own loss's unweighted
gradient: the whole model then moves along one weighted loss, which the balancer contract
checks (for non-conflicting tasks this is the mean loss, where the reference mixes the mean
on the shared part with the sum on the heads). Absent tasks are left out of J.

Logged per epoch: the mean w per task (``weights()``) and the base's cosine statistics.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS


def upgrad_weights(gram: np.ndarray, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> np.ndarray:
    """w (d = Jᵀ w) for a Gramian J Jᵀ, with the mean preference vector."""
    g = np.asarray(gram, dtype=np.float64)
    k = len(g)
    trace = float(np.trace(g))
    g = g / trace if trace >= norm_eps else np.zeros_like(g)
    g = g + reg_eps * np.eye(k)
    lt = np.linalg.cholesky(g).T                # 𝒢 = L Lᵀ, ‖Lᵀ v‖² = vᵀ 𝒢 v
    w = np.zeros(k)
    for i in range(k):
        u = np.zeros(k)
        u[i] = 1.0 / k
        x, _ = nnls(lt, -lt @ u, maxiter=50 * k)
        w += u + x
    return w


@BALANCERS.register("upgrad")
class UPGrad(GradientBalancer):
    """``norm_eps`` (1e-4), ``reg_eps`` (1e-4), ``mode``: parameters | representation."""

    def __init__(self, task_names, norm_eps: float = 1e-4, reg_eps: float = 1e-4, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if not float(reg_eps) > 0 or float(norm_eps) < 0:
            raise ValueError(f"balancer.reg_eps must be > 0 and balancer.norm_eps >= 0 (got {reg_eps}, {norm_eps})")
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)

    def aggregate(self, grads, losses):
        gram = (grads @ grads.T).double().cpu().numpy()  # the one host sync of the step
        w = torch.as_tensor(upgrad_weights(gram, self.norm_eps, self.reg_eps), dtype=grads.dtype, device=grads.device)
        return w @ grads, w
