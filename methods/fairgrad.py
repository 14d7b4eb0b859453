"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024; the
authors' code: OptMN-Lab/fairgrad ``methods/weight_methods.py`` class ``FairGrad``; also
LibMTL/weighting/FairGrad.py).

Multi-task learning as fair allocation of the common update d among the tasks, task i's
utility being u_i = ⟨g_i, d⟩: d maximises Σ_i u_i^{1−α}/(1−α) (α-fairness: α → 1 proportional
fairness, i.e. Nash-MTL; α = 2 minimum potential delay; α → ∞ max-min) within a small ball. Its
optimality condition gives d = Σ_i w_i g_i with w > 0 solving

    (G Gᵀ w)_i = w_i^{−1/α}   for every task i      (G: task gradients as rows)

solved, as the authors do, by ``scipy.optimize.least_squares`` on the residual
G Gᵀ w − w^{−1/α} from w = 1/T, with bounds w ≥ 0 (default tolerances). The authors then write
T·Σ_i w_i g_i into the shared gradient ("to match the sum loss") and clip it to norm
``max_norm`` (1.0; 0 = no clip) as ``clip_grad_norm_`` does.

Defaults: ``alpha: 2.0`` (the value in every one of the authors' experiment scripts,
experiments/*/run.sh; their parser default and LibMTL's is 1.0), ``max_norm: 1.0`` (theirs;
LibMTL has no clip and no factor T). Gradients of the shared parameters only (``mode:
parameters``), as theirs (LibMTL refuses representation gradients for FairGrad).

Deviations: task-specific parameters get Σ_i c·T·w_i ∇L_i (c the clip factor), where the
authors give each head its own loss's unweighted gradient: the whole model moves along one
weighted loss, which the balancer contract checks. Absent tasks are left out.

Logged per epoch: the mean effective weight c·T·w_i (``weights()``) and in ``balancer``: the
mean residual max_i |(G Gᵀ w)_i − w_i^{−1/α}| / w_i^{−1/α} and the clipped steps.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import least_squares

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._pareto import ClippedBalancer


def fairgrad_weights(gram: np.ndarray, alpha: float = 2.0) -> np.ndarray:
    """w solving G Gᵀ w = w^{−1/α} (least squares from 1/T, w ≥ 0), as the authors."""
    a = np.asarray(gram, dtype=np.float64)
    k = len(a)

    def residual(x):
        return a @ x - np.power(1.0 / x, 1.0 / alpha)

    return least_squares(residual, np.ones(k) / k, bounds=(0, np.inf)).x


@BALANCERS.register("fairgrad")
class FairGrad(ClippedBalancer):
    """``alpha`` (2.0), ``max_norm`` (1.0; 0 = no clip), ``mode`` (parameters only)."""

    modes = ("parameters",)
    state_fields = ClippedBalancer.state_fields + ("_residual",)

    def __init__(self, task_names, alpha: float = 2.0, max_norm: float = 1.0, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if not float(alpha) > 0 or float(max_norm) < 0:
            raise ValueError(f"balancer.alpha must be > 0 and balancer.max_norm >= 0 (got {alpha}, {max_norm})")
        self.alpha, self.max_norm = float(alpha), float(max_norm)
        self._residual = 0.0

    def aggregate(self, grads, losses):
        gram = (grads @ grads.T).double().cpu().numpy()  # the one host sync of the step
        w = fairgrad_weights(gram, self.alpha)
        target = np.power(1.0 / np.maximum(w, 1e-300), 1.0 / self.alpha)
        self._residual += float(np.max(np.abs(gram @ w - target) / target))
        w = torch.as_tensor(w * len(w), dtype=grads.dtype, device=grads.device)
        return self.clipped(w @ grads, w)

    def epoch_end(self, train_losses):
        steps = max(float(self.steps), 1.0)
        state = super().epoch_end(train_losses)
        state["residual"] = self._residual / steps
        self._residual = 0.0
        return state
