"""Smooth Tchebycheff scalarisation (STCH; Lin et al., "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024). Reference code: the authors'
Xi-L/STCH ``STCH_MTL/LibMTL/weighting/STCH.py`` (identical to LibMTL's
``LibMTL/weighting/STCH.py``), defaults from their ``LibMTL/config.py``.

The Tchebycheff scalarisation max_k (f_k − z_k) optimises the worst task; STCH smooths the
max with a log-sum-exp of temperature μ. In the authors' MTL form, on log-losses relative
to a nadir (reference) point z:

    L_STCH = K · μ · log Σ_k exp( log(L_k / z_k + ε) / μ )

whose gradient is Σ_k w_k ∇L_k with w_k = K · p_k / (L_k + ε·z_k), p = softmax_k(log(L_k/z_k
+ ε)/μ): the task furthest above its reference gets the most weight; μ → 0 is the hard max,
large μ tends to Σ_k log L_k / μ-scaled.

Warm-up: for the first ``warmup_epochs`` epochs the model trains on Σ_k log(L_k + ε); during
the last of them the per-task training losses are averaged into the nadir z; STCH proper
starts after. Defaults: μ = 1, ``warmup_epochs`` = 5, ε = 1e-20 — the authors'
``STCH_warmup_epoch = 4`` counts epochs from 0 (epochs 0-4 are warm-up, the nadir is the mean
loss of epoch 4), i.e. 5 warm-up epochs here (epochs counted from 1). ``warmup_epochs: 0``
starts with STCH at z = 1.

Deviations: a task absent from the batch (loss exactly 0) is left out of the log-sum-exp
and of the nadir average (the nadir is its mean over the warm-up steps where it was
present; 1 if it never was); the constant shift the authors subtract inside the exp (for
stability) is done by ``softmax`` itself. Losses must be positive.

Mode: none (loss-scale, one backward). DDP: ``distributed = False``. State (buffers): the
nadir sums and counts. Logged: ``weights()`` = epoch-mean w; ``epoch_end`` → the phase
(``warmup`` / ``stch``) and the nadir once known.
"""
from __future__ import annotations

import torch

from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import LossWeighting, positive_float

EPS = 1e-20


@BALANCERS.register("stch")
class STCH(LossWeighting):
    """``mu``: the smoothing temperature μ (1.0); ``warmup_epochs``: epochs of Σ log L_k before
    STCH, the last one measuring the nadir (5)."""

    def __init__(self, task_names, mu: float = 1.0, warmup_epochs: int = 5):
        super().__init__(task_names)
        self.mu = positive_float("mu", mu)
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"balancer.warmup_epochs must be an integer >= 0 (got {warmup_epochs!r})")
        self.warmup_epochs = int(warmup_epochs)
        k = len(self.task_names)
        self.register_buffer("nadir_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(k))
        self.register_buffer("last_epoch", torch.zeros((), dtype=torch.long))

    def nadir(self) -> torch.Tensor:
        return torch.where(self.nadir_count > 0, self.nadir_sum / self.nadir_count.clamp_min(1), 1.0).float()

    def loss_weights(self, losses, present, ctx):
        cur = losses.detach()
        self.last_epoch.fill_(ctx.epoch)
        if ctx.epoch <= self.warmup_epochs:
            if ctx.epoch == self.warmup_epochs:
                self.nadir_sum += torch.where(present, cur, 0.0).double()
                self.nadir_count += present.float()
            return 1.0 / (cur + EPS)
        z = self.nadir()
        scores = torch.where(present, torch.log(cur / z + EPS) / self.mu, float("-inf"))
        p = torch.softmax(scores, 0)
        return len(self.task_names) * p / (cur + EPS * z)

    def epoch_end(self, train_losses):
        super().epoch_end(train_losses)
        state = {"phase": "warmup" if int(self.last_epoch) <= self.warmup_epochs else "stch"}
        if int(self.last_epoch) >= self.warmup_epochs:
            state["nadir"] = dict(zip(self.task_names, self.nadir().tolist()))
        return state
