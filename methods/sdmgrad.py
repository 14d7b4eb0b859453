"""SDMGrad (Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023; the authors' code: OptMN-Lab/sdmgrad
``methods/weight_methods.py`` class ``SDMGrad`` with experiments/nyuv2/run.sh; also
LibMTL/weighting/SDMGrad.py).

Stochastic direction-oriented MGDA: the update stays close to the mean gradient g₀ while
reducing the worst task. Per step, with the Gram matrix M = G Gᵀ of the task gradients
(rows), normalised by s² with s = mean_i √(M_ii + 1e-4), the simplex weights w (kept across
steps, 1/T at the start) take ``niter`` (20) steps of SGD (learning rate 10, momentum 0.5, a
fresh momentum buffer each training step) on ½wᵀMw + λ wᵀM1/T, each followed by the
Euclidean projection onto the simplex; then

    d = T · (Σ_i w_i g_i + λ g₀) / (1 + λ),   g₀ = (1/T) Σ_i g_i

(the factor T "to match the sum loss", as the authors' ``overwrite_grad``), clipped to norm
``max_norm`` (1.0; 0 = none) as their ``clip_grad_norm_`` on the shared parameters. Defaults:
the authors' (``lamda=0.3``, ``niter=20``, ``lr=10``, ``momentum=0.5``, ``max_norm=1.0``;
LibMTL uses lr 5, no factor T and no clip). Gradients of the shared parameters (``mode:
parameters``) as both references ("we allow only shared params for now").

Deviations:

* One batch per step: the paper samples three independent batches (ξ, ξ' for M, ζ for d) and
  LibMTL's trainer draws three; mtlbench's trainer gives the balancer one batch, so all three
  are that batch's gradients. (In the authors' own code the three gradient matrices are one
  tensor, ``[torch.Tensor(...)] * 3``, so they also coincide there, holding the last batch's
  gradients.)
* Task-specific parameters get Σ_i c·T·(w_i + λ/T)/(1 + λ)·∇L_i, the effective weights of d
  (c: the clip factor), where the authors give heads the unweighted gradients accumulated
  over the three batches: the whole model moves along one weighted loss, which the balancer
  contract checks.
* w's inner loop runs in float64; absent tasks are left out and the present tasks' w is
  updated on its own simplex (``mtlbench.methods._pareto``).

Logged per epoch: the mean effective weights (``weights()``), and in ``balancer`` the mean
simplex weights w and the clipped steps.
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._pareto import ClippedBalancer, project_simplex, put_back, restrict


def sdmgrad_inner(gram: torch.Tensor, w: torch.Tensor, lamda: float, niter: int, lr: float = 10.0,
                  momentum: float = 0.5) -> torch.Tensor:
    """The simplex weights after ``niter`` projected SGD-with-momentum steps (float64)."""
    m = gram.double()
    scale = torch.sqrt(torch.diagonal(m) + 1e-4).mean()
    m = m / scale ** 2
    target = m.mean(dim=1)                     # M 1/T
    w, buf = w.double().clone(), None
    for _ in range(niter):
        g = m @ w + lamda * target
        buf = g if buf is None else momentum * buf + g   # torch.optim.SGD's momentum (dampening 0)
        w = project_simplex(w - lr * buf)
    return w


@BALANCERS.register("sdmgrad")
class SDMGrad(ClippedBalancer):
    """``lamda`` (0.3), ``niter`` (20), ``lr`` (10), ``momentum`` (0.5), ``max_norm`` (1.0; 0 =
    none), ``mode`` (parameters only)."""

    modes = ("parameters",)

    def __init__(self, task_names, lamda: float = 0.3, niter: int = 20, lr: float = 10.0, momentum: float = 0.5,
                 max_norm: float = 1.0, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        if float(lamda) < 0 or int(niter) < 1 or not float(lr) > 0 or float(max_norm) < 0:
            raise ValueError("balancer.lamda >= 0, balancer.niter >= 1, balancer.lr > 0 and balancer.max_norm >= 0 "
                             f"(got {lamda}, {niter}, {lr}, {max_norm})")
        self.lamda, self.niter, self.lr = float(lamda), int(niter), float(lr)
        self.momentum, self.max_norm = float(momentum), float(max_norm)
        k = len(self.task_names)
        self.register_buffer("w", torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.register_buffer("w_sum", torch.zeros(k, dtype=torch.float64))

    def aggregate(self, grads, losses):
        idx = self.active_index
        sub, mass = restrict(self.w, idx)
        sub = sdmgrad_inner(grads @ grads.T, sub, self.lamda, self.niter, self.lr, self.momentum)
        put_back(self.w, idx, sub, mass)
        self.w_sum.index_add_(0, idx, sub)
        k = len(sub)
        eff = (k * (sub + self.lamda / k) / (1.0 + self.lamda)).to(grads.dtype)
        return self.clipped(eff @ grads, eff)

    def epoch_end(self, train_losses):
        steps = float(self.steps)
        state = super().epoch_end(train_losses)
        if steps:
            state["simplex_weights"] = dict(zip(self.task_names, (self.w_sum / steps).tolist()))
        self.w_sum.zero_()
        return state
