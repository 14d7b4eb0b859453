"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018; Algorithm 1). The authors
published no code; compared with LibMTL's ``LibMTL/weighting/GradNorm.py`` (differences below).

Learnable loss weights w (1 at start); the model follows Σ_k w_k(t) L_k. Each step, on the
last shared layer W (``ctx.last_shared``, as the paper does to keep the cost low):

    G_k = ‖∇_W (w_k L_k)‖ = w_k ‖∇_W L_k‖,   Ḡ = mean_k G_k,
    L̃_k = L_k(t) / L_k(0),   r_k = L̃_k / mean_j L̃_j   (relative inverse training rate),
    L_grad = Σ_k | G_k − Ḡ · r_k^α |   (the target Ḡ·r_k^α held constant),

so ∂L_grad/∂w_k = sign(G_k − Ḡ r_k^α) · ‖∇_W L_k‖; w takes one optimiser step on it and is
renormalised to Σ_k w_k = K. α (``alpha``) is the restoring force: 1.5 (the paper's NYUv2
setting and LibMTL's default; the paper uses 0.12 on its synthetic task). L_k(0) is task k's
loss at the first step where it has labels (the paper's "initial loss").

Cost: K small backward passes from each loss to W (``ctx.grads`` w.r.t. W only) plus the
one full backward; the weight update is device-side (no host sync).

Choices the paper leaves open, and deviations:

* w's optimiser: its own Adam (``lr`` = 0.025, betas (0.9, 0.999)) on a buffer, so the step
  size does not depend on the scale of the gradient norms and w never enters the model's
  optimiser; after the step w is clipped at 0 (a negative loss weight would ascend that
  task's loss) and renormalised to sum K. LibMTL instead learns w = K·softmax(s) with the
  model's optimiser, takes L_k(0) as the first epoch's mean loss (equal weights during epoch
  1), and measures G_k on all shared parameters (or the representation).
* A task absent from the batch (loss exactly 0) is left out of Ḡ, of the mean of L̃ and of
  the update (its w_k keeps its value until renormalisation).
* An architecture without shared parameters (``independent``): no W, w stays 1 (equal).

Mode: the last shared layer's parameters (neither full-parameter nor representation mode).
DDP: ``distributed = False``. Logged: ``weights()`` = epoch-mean w (the weights used).
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import LossWeighting, adam_step, positive_float


def gradnorm_grad(w, norms, losses, initial, present, alpha: float) -> torch.Tensor:
    """∂L_grad/∂w from the weights, per-task gradient norms ‖∇_W L_k‖, current and initial
    losses (tasks not ``present`` get 0)."""
    n = present.sum().clamp_min(1)
    ratio = torch.where(present, losses / torch.where(present, initial, 1.0), 0.0)
    r = ratio / (ratio.sum() / n).clamp_min(torch.finfo(ratio.dtype).tiny)
    g = w * norms
    g_bar = torch.where(present, g, 0.0).sum() / n
    return torch.where(present, torch.sign(g - g_bar * r.pow(alpha)) * norms, 0.0)


@BALANCERS.register("gradnorm")
class GradNorm(LossWeighting):
    """``alpha``: the restoring force α (1.5); ``lr``: the weights' Adam learning rate (0.025)."""

    state_fields = LossWeighting.state_fields + ("_adam_steps",)

    def __init__(self, task_names, alpha: float = 1.5, lr: float = 0.025):
        super().__init__(task_names)
        self.alpha = positive_float("alpha", alpha, allow_zero=True)
        self.lr = positive_float("lr", lr)
        k = len(self.task_names)
        self.register_buffer("w", torch.ones(k))
        self.register_buffer("initial_loss", torch.zeros(k))
        self.register_buffer("has_initial", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("adam_m", torch.zeros(k))
        self.register_buffer("adam_v", torch.zeros(k))
        self._adam_steps = 0

    def loss_weights(self, losses, present, ctx):
        used = self.w.clone()
        params = list(ctx.last_shared)
        if params:
            cur = losses.detach()
            norms = ctx.grads(list(losses.unbind(0)), params).norm(dim=1).to(cur.device)
            first = present & ~self.has_initial
            self.initial_loss.copy_(torch.where(first, cur, self.initial_loss))
            self.has_initial |= present
            grad = gradnorm_grad(self.w, norms, cur, self.initial_loss, present, self.alpha)
            self._adam_steps = adam_step(self.w, grad, self.adam_m, self.adam_v, self._adam_steps, self.lr)
            self.w.clamp_(min=0.0)
            self.w.mul_(len(self.task_names) / self.w.sum().clamp_min(torch.finfo(self.w.dtype).tiny))
        return used
