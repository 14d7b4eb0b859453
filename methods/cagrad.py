"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse
Gradient Descent for Multi-task Learning", NeurIPS 2021). Reference code: the authors'
Cranial-XIX/CAGrad ``nyuv2/utils.py`` (``cagrad`` in ``multi_task_mgd_trainer``; c = 0.4 in
``nyuv2/run.sh``), LibMTL ``LibMTL/weighting/CAGrad.py`` and Nash-MTL's
``methods/weight_methods.py`` (class ``CAGrad``, c = 0.4).

With ḡ = mean_k g_k, the update maximises the worst task's improvement in a ball around ḡ:
d* = argmax_{‖d − ḡ‖ ≤ c‖ḡ‖} min_k g_kᵀ d. Its dual, over the simplex,

    w* = argmin_{w ∈ Δ} g_wᵀ ḡ + c‖ḡ‖ · ‖g_w‖,   g_w = Σ_k w_k g_k,

gives d* = ḡ + (c‖ḡ‖ / ‖g_w*‖) g_w*. The update is K · d* / ρ (K: "to match the sum loss",
as the authors), ρ set by ``rescale``: 0 → 1, 1 → 1 + c², 2 → 1 + c. c = 0 is gradient
descent on Σ_k L_k; large c tends to MGDA's min-norm direction. Heads: each head its own
loss's gradient (weight 1), as the references.

Defaults: c = 0.4 (``c``; the authors' NYUv2/Cityscapes setting and Nash-MTL's; LibMTL's
``calpha`` default is 0.5); ``rescale`` = 2, a deviation: the authors run ``rescale = 1``.
The two differ only by the constant factor (1 + c²)/(1 + c) on the shared gradient (0.83 at
c = 0.4), which Adam ignores (SGD sees it as a shared-part learning rate); with 1 + c,
identical task gradients give exactly equal weighting's update (ḡ = g_w, λ = c), the
property every balancer here keeps, where 1 + c² would scale the shared part 1.21x against
the heads. ``rescale: 1`` restores the authors' scaling.

Solver: only the T×T Gram matrix A = G Gᵀ is needed (‖ḡ‖² = mean(A), g_wᵀḡ = wᵀA1/K,
‖g_w‖² = wᵀAw): float64 on the host (one device→host copy per step), scipy's SLSQP from the
simplex centre, as the references, but with the analytic gradient, a tight tolerance
(ftol 1e-12) and A divided by its mean diagonal first (w* does not change under a common
scale of the gradients; the references' unscaled +1e-8 terms would matter for small
gradients). c = 0 skips the solver. Host cost per step (one thread): ~1-3 ms for T ≤ 29, ~0.2 s
for T = 139 (SLSQP is cubic in T).

Mode: ``parameters`` (default, the paper) or ``representation``. DDP: ``distributed = False``.
Logged: ``weights()`` = epoch-mean coefficient of each g_k in the update,
(1 + K λ w_k)/ρ with λ = c‖ḡ‖/‖g_w‖.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from contextlib import nullcontext

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._combination import CombinationBalancer, host_gram
from mtlbench.methods._loss_weighting import positive_float

_CONTROLLER = []


def one_blas_thread():
    """A context limiting BLAS to one thread (threadpoolctl, installed with scikit-learn; the
    controller is built once: building it reads the loaded libraries, ~1 ms)."""
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
            _CONTROLLER.append(ThreadpoolController())
        except ImportError:  # pragma: no cover - then the solver just runs unthrottled
            _CONTROLLER.append(None)
    return nullcontext() if _CONTROLLER[0] is None else _CONTROLLER[0].limit(limits=1)


RESCALE = {0: lambda c: 1.0, 1: lambda c: 1.0 + c * c, 2: lambda c: 1.0 + c}


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """w* on the simplex for the Gram matrix (see the module docstring)."""
    t = gram.shape[0]
    a = gram / max(float(np.mean(np.diag(gram))), 1e-300)
    ab = a.mean(axis=1)                                   # A·1/K
    radius = c * math.sqrt(max(float(a.mean()), 0.0))     # c·‖ḡ‖

    def fun(w):
        q = max(float(w @ a @ w), 1e-30)
        return float(w @ ab) + radius * math.sqrt(q), ab + radius * (a @ w) / math.sqrt(q)

    with one_blas_thread():  # T×T problems: BLAS threads only contend (10-100x slower on a busy host)
        res = minimize(fun, np.full(t, 1.0 / t), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * t,
                       constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(), "jac": lambda w: -np.ones(t)},),
                       options={"ftol": 1e-12, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def cagrad_coefficients(gram: np.ndarray, c: float, rescale: int = 2) -> np.ndarray:
    """Coefficients of the task gradients in the update K·d*/rescale."""
    t = gram.shape[0]
    if c == 0:
        return np.ones(t) / RESCALE[rescale](c)
    w = cagrad_weights(gram, c)
    gbar = math.sqrt(max(float(gram.mean()), 0.0))
    gw = math.sqrt(max(float(w @ gram @ w), 0.0))
    lam = c * gbar / gw if gw > 0 else 0.0
    return (1.0 + t * lam * w) / RESCALE[rescale](c)


@BALANCERS.register("cagrad")
class CAGrad(CombinationBalancer):
    """``c``: the radius of the ball around the mean gradient, in units of its norm (0.4);
    ``rescale``: 0 | 1 (÷(1+c²)) | 2 (÷(1+c)); ``mode``: parameters | representation."""

    def __init__(self, task_names, c: float = 0.4, rescale: int = 2, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.c = positive_float("c", c, allow_zero=True)
        if rescale not in RESCALE:
            raise ValueError(f"balancer.rescale must be one of {sorted(RESCALE)} (got {rescale!r})")
        self.rescale = int(rescale)

    def aggregate(self, grads, losses):
        (gram,) = host_gram(grads)
        return self.combine_rows(cagrad_coefficients(gram, self.c, self.rescale), grads), None
