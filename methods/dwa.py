"""Dynamic Weight Average (DWA; Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019, eq. 7; their code: lorenmt/mtan).

    λ_k(t) = K · exp(w_k(t−1) / T) / Σ_i exp(w_i(t−1) / T),   w_k(t−1) = L_k(t−1) / L_k(t−2)

``L_k(e)`` is task k's *epoch-average training loss* of epoch e (what the trainer passes
to ``epoch_end``), K the number of tasks, T the ``temperature`` (2 in the paper).
Epochs are numbered from 1; λ_k = 1 during epochs 1 and 2 (no loss ratio exists yet),
so epoch t ≥ 3 uses the losses of epochs t−1 and t−2. The update is Σ_k λ_k L_k.

Logging convention: ``weights()`` (logged as ``balancer_weights`` for epoch e) returns
the λ that were *used during epoch e*; ``epoch_end`` returns the λ computed for the
next epoch as ``{"next_weights": {task: λ}}``. λ sum to K in every epoch.

Degenerate ratio: when L_k(t−2) is not a positive finite number (e.g. a task with no
labelled sample in that epoch, whose average loss is 0) or the ratio is not finite,
w_k = 1 ("no change").

State: the loss history (L(t−1), L(t−2)), the number of finished epochs and the λ used
/ to use are buffers, so they live in ``state_dict()`` and follow ``.to(device)``. The
per-step ``combine`` is a device-side dot product: no host sync.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import BALANCERS


def dwa_weights(last: Dict[str, float], prev: Dict[str, float], temperature: float = 2.0) -> Dict[str, float]:
    """λ for the next epoch from the last two epoch-average losses (``last`` = L(t−1),
    ``prev`` = L(t−2)); pure Python, for reference and tests."""
    names = list(last)
    ratios = []
    for t in names:
        p, l = prev[t], last[t]
        r = l / p if (p > 0 and math.isfinite(p)) else 1.0
        ratios.append(r if math.isfinite(r) else 1.0)
    m = max(r / temperature for r in ratios)  # stable softmax
    e = [math.exp(r / temperature - m) for r in ratios]
    s = sum(e)
    return {t: len(names) * v / s for t, v in zip(names, e)}


@BALANCERS.register("dwa")
class DWA(Balancer):
    """``temperature``: T in the formula above (2.0)."""

    def __init__(self, task_names, temperature: float = 2.0):
        super().__init__(task_names)
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(f"balancer.temperature must be > 0 (got {temperature})")
        self.temperature = temperature
        k = len(self.task_names)
        self.register_buffer("lambdas", torch.ones(k))        # λ used by combine (this epoch)
        self.register_buffer("used_lambdas", torch.ones(k))   # λ used during the last finished epoch
        self.register_buffer("loss_last", torch.zeros(k, dtype=torch.float64))  # L(t−1)
        self.register_buffer("loss_prev", torch.zeros(k, dtype=torch.float64))  # L(t−2)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def combine(self, losses):
        stacked = torch.stack([losses[t] for t in self.task_names])
        return stacked @ self.lambdas.to(stacked.dtype)

    def epoch_end(self, train_losses):
        missing = [t for t in self.task_names if t not in train_losses]
        if missing:
            raise ValueError(f"DWA.epoch_end: no epoch loss for task(s) {missing}")
        self.used_lambdas.copy_(self.lambdas)
        new = torch.tensor([float(train_losses[t]) for t in self.task_names], dtype=torch.float64)
        self.loss_prev.copy_(self.loss_last)
        self.loss_last.copy_(new)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # the next epoch is ≥ 3: a loss ratio exists
            last = dict(zip(self.task_names, self.loss_last.tolist()))
            prev = dict(zip(self.task_names, self.loss_prev.tolist()))
            lam = dwa_weights(last, prev, self.temperature)
            self.lambdas.copy_(torch.tensor([lam[t] for t in self.task_names]))
        return {"next_weights": dict(zip(self.task_names, self.lambdas.tolist()))}

    def weights(self):
        """λ used during the epoch that just finished (before any epoch: the current λ)."""
        src = self.used_lambdas if int(self.epochs_seen) > 0 else self.lambdas
        return dict(zip(self.task_names, src.tolist()))
