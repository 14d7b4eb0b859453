"""FAMO (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).
Reference code: the authors' Cranial-XIX/FAMO ``famo.py`` and ``methods/weight_methods.py``
(class ``FAMO``; update called in ``experiments/nyuv2/trainer.py``), and LibMTL
``LibMTL/weighting/FAMO.py`` (same arithmetic).

Task logits ξ ∈ R^K (0 at start), z = softmax(ξ). Each step the model follows

    Σ_k z_k log(L_k − b_k + ε) / c,   c = Σ_k z_k / (L_k − b_k + ε)  (c held constant)

i.e. Σ_k w_k ∇L_k with w_k = z_k / (c·(L_k − b_k + ε)) (the w sum to 1): a convex
combination that decreases every task's log-loss at the same rate to first order, from ONE
backward pass (O(1) in K, no per-task gradient). ξ then moves so that the tasks whose
log-loss decreased least get more weight: with δ_k = log(L_k^before − b_k + ε) −
log(L_k^after − b_k + ε), the gradient of ξ is J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), applied by
ξ's own Adam optimiser (lr ``lr`` = 0.025, L2 weight decay ``gamma`` = 1e-3, betas
(0.9, 0.999), eps 1e-8). b = ``min_loss`` (0: the references' default), ε = 1e-8.

Defaults: ``lr`` 0.025 and ``gamma`` 1e-3 as the paper's Algorithm 2, LibMTL and the authors'
NYUv2 ``run.sh`` (their ``weight_methods.FAMO`` defaults to gamma 1e-5, ``famo.py`` to 0.01).

Deviations:

* L^after: the references run a second forward pass after the optimizer step, on the SAME
  batch, to get L(θ_{t+1}). A balancer here only sees the step's losses, and that forward
  would cost ~1/3 of a step (the target for loss-scale methods is ≤ 1.05x ``equal``), so
  L^after is the next step's losses (next batch): ξ is updated at the start of step t+1 from
  (L_t on batch t, L_{t+1} on batch t+1), then step t+1 uses the new z: the same order of
  updates as the references, with batch-to-batch noise in δ (it averages out over steps,
  Adam normalises its scale). The first step makes no ξ update.
* No gradient clipping inside the balancer (the references clip shared gradients to norm 1
  in ``famo.py``): use ``trainer.grad_clip``.
* Absent tasks (loss exactly 0: no labelled sample): left out of the combination (z
  renormalised over the tasks present) and of the ξ update (δ over the tasks present at both
  steps, softmax Jacobian of the renormalised z), where the references would divide by ε.

Mode: none (loss-scale, one backward). DDP: ``distributed = False``. State: ξ, its Adam
moments and the previous step's log-losses are buffers; the Adam step count and the "has a
previous step" flag are declared state fields. Logged: ``weights()`` = epoch-mean w;
``epoch_end`` → ``{"z": z}``.
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import LossWeighting, adam_step, positive_float

EPS = 1e-8


def softmax_vjp(z: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ξ of ⟨softmax restricted to ``mask`` (float 0/1), δ⟩ (z = softmax(ξ));
    with every task in ``mask`` it is z ⊙ (δ − zᵀδ)."""
    zm = z * mask
    zm = zm / zm.sum().clamp_min(1e-30)
    dm = delta * mask
    return zm * (dm - (zm * dm).sum())


@BALANCERS.register("famo")
class FAMO(LossWeighting):
    """``lr``: ξ's Adam learning rate (0.025); ``gamma``: its weight decay (1e-3);
    ``min_loss``: the lower bound b subtracted from every loss (0)."""

    state_fields = LossWeighting.state_fields + ("_has_prev", "_adam_steps")

    def __init__(self, task_names, lr: float = 0.025, gamma: float = 1e-3, min_loss: float = 0.0):
        super().__init__(task_names)
        self.lr = positive_float("lr", lr)
        self.gamma = positive_float("gamma", gamma, allow_zero=True)
        self.min_loss = float(min_loss)
        k = len(self.task_names)
        self.register_buffer("logits", torch.zeros(k))
        self.register_buffer("adam_m", torch.zeros(k))
        self.register_buffer("adam_v", torch.zeros(k))
        self.register_buffer("prev_log", torch.zeros(k))        # log(L − b + ε) of the previous step
        self.register_buffer("prev_present", torch.zeros(k))     # 1 where that step had the task
        self._has_prev = False
        self._adam_steps = 0

    def loss_weights(self, losses, present, ctx):
        gap = losses.detach() + (EPS - self.min_loss)            # L − b + ε
        log_gap = gap.log()
        here = present.float()
        if self._has_prev:  # ξ step from the previous step's losses to these (tasks present at both)
            both = self.prev_present * here
            grad = softmax_vjp(torch.softmax(self.logits, 0), self.prev_log - log_gap, both)
            self._adam_steps = adam_step(self.logits, grad, self.adam_m, self.adam_v, self._adam_steps,
                                         self.lr, self.gamma)
        q = torch.softmax(self.logits, 0) * here / gap           # z_k / (L_k − b + ε), present tasks
        self.prev_log.copy_(log_gap)
        self.prev_present.copy_(here)
        self._has_prev = True
        return q / q.sum().clamp_min(1e-30)                      # z renormalised over the present cancels in c

    def epoch_end(self, train_losses):
        super().epoch_end(train_losses)
        return {"z": dict(zip(self.task_names, torch.softmax(self.logits, 0).tolist()))}

    def initial_weights(self):
        return {t: 1.0 / len(self.task_names) for t in self.task_names}
