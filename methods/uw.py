"""Uncertainty weighting (UW; Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

One learnable log-variance s_k = log σ_k² per task (``nn.Parameter``, initialised to
``init`` = 0, i.e. σ_k = 1, as in Nash-MTL's UW code; LibMTL (``LibMTL/weighting/UW.py``)
and lorenmt/mtan (every ``im2im_pred/model_segnet_*.py``: ``logsigma`` = [−0.5, −0.5, −0.5])
start at −0.5: ``balancer.init=-0.5`` reproduces them), optimised with the model (the
trainer puts the balancer's parameters in a second optimiser param group). Two forms, chosen by ``form``:

* ``regression`` (default): Σ_k ½·exp(−s_k)·L_k + ½·s_k.
  Kendall's Gaussian likelihood (their Sec. 3.2, two regression tasks):
  −log N(y; f, σ²) = ‖y − f‖²/(2σ²) + log σ + const; with σ² = exp(s), 1/(2σ²) = ½·exp(−s) and log σ = ½·s. This is the
  form MTAN's (lorenmt/mtan) and LibMTL's UW code apply to *every* task, whatever its
  loss, and the usual benchmark convention.
* ``classification``: Σ_k exp(−s_k)·L_k + ½·s_k.
  Kendall's softmax likelihood with temperature σ² (Sec. 3.2, regression + classification
  joint loss): −log Softmax(y, f/σ²) ≈ (1/σ²)·L_CE + log σ, using their approximation
  (1/σ)·Σ_c exp(f_c/σ²) ≈ (Σ_c exp f_c)^{1/σ²}; with σ² = exp(s), 1/σ² = exp(−s) and
  log σ = ½·s.

The ½·s_k regulariser is applied on every step, also when task k is absent from the
batch (L_k = 0 exactly): this follows LibMTL and MTAN, which always add it. On such a
step the gradient on s_k is the regulariser's alone (+½), so under partial labels s_k
drifts down (σ_k shrinks, task k's weight grows) between the batches that label it.

Logged: ``weights()`` are the effective per-task loss weights (½·exp(−s_k) for
``regression``, exp(−s_k) for ``classification``) at the end of the epoch;
``epoch_end`` returns ``{"sigma": {task: σ_k = exp(s_k / 2)}}``. The loss is computed
in float32 (autocast-safe); no host sync per step.
"""
from __future__ import annotations

import torch
from torch import nn

from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import BALANCERS

FORMS = {"regression": 0.5, "classification": 1.0}  # factor c in Σ c·exp(−s)·L + ½·s


@BALANCERS.register("uw")
class UncertaintyWeighting(Balancer):
    """``form``: 'regression' (½·exp(−s)·L + ½·s) or 'classification' (exp(−s)·L + ½·s);
    ``init``: the initial s_k (0.0)."""

    def __init__(self, task_names, form: str = "regression", init: float = 0.0):
        super().__init__(task_names)
        if form not in FORMS:
            raise ValueError(f"balancer.form must be one of {sorted(FORMS)} (got {form!r})")
        self.form = form
        self.factor = FORMS[form]
        self.log_var = nn.Parameter(torch.full((len(self.task_names),), float(init)))  # s_k = log σ_k²

    def combine(self, losses):
        stacked = torch.stack([losses[t].float() for t in self.task_names])
        s = self.log_var.float()
        return (self.factor * torch.exp(-s) * stacked + 0.5 * s).sum()

    def epoch_end(self, train_losses):
        sigma = torch.exp(self.log_var.detach() / 2).tolist()
        return {"sigma": dict(zip(self.task_names, sigma))}

    def weights(self):
        w = (self.factor * torch.exp(-self.log_var.detach())).tolist()
        return dict(zip(self.task_names, w))
