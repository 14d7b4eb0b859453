"""Shared parts of the loss-weighting balancers (GLS, RLW, FAMO, STCH, GradNorm).

``LossWeighting``: each step the balancer computes per-task weights w from the loss values
(and, for GradNorm, per-task gradient norms), detached, and back-propagates Σ_k w_k L_k in
float32: one backward pass, as cheap as equal weighting. For a method whose objective is a
non-linear function f(L_1..L_K) (GLS's geometric mean, STCH's log-sum-exp, FAMO's weighted
log-losses), w_k = ∂f/∂L_k at the current losses, so the update is exactly ∇f.

A task absent from the batch (loss exactly 0: no labelled sample) gets weight 0. Logged per
epoch: ``weights()`` = the mean w over the steps of the last finished epoch (buffers, no host
sync per step).

``adam_step``: Adam (Kingma & Ba; the arithmetic of ``torch.optim.Adam`` with L2 weight
decay, no amsgrad) on a buffer, for balancers with their own weight optimiser (FAMO's task
logits, GradNorm's weights): the state lives in buffers, so it is checkpointed and moved
with the balancer, and the weights never enter the model's optimiser.

``run_generator``: a ``torch.Generator`` seeded from torch's global RNG when the balancer is
built (the run seeds that RNG first), so a randomised method is reproducible per seed and
never draws from the global RNG during steps.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from mtlbench.core.balancer import Balancer


def run_generator() -> torch.Generator:
    """A CPU generator seeded from the global RNG (one draw, at construction)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))


def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
              step: int, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8) -> int:
    """One Adam step on ``param`` in place; ``step``: the steps done before; returns step + 1
    (a Python int: the bias corrections are host scalars, no extra device ops)."""
    b1, b2 = betas
    step += 1
    if weight_decay:
        grad = grad + weight_decay * param
    exp_avg.lerp_(grad, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - b2 ** step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - b1 ** step))
    return step


class LossWeighting(Balancer):
    """Subclasses implement ``loss_weights(losses, present, ctx) -> w [K]`` (``losses``: the
    float32 per-task losses, still on the graph; ``present``: bool [K], False for a task
    absent from the batch). ``initial_weights()`` is what ``weights()`` reports before any
    epoch ends."""

    distributed = False  # weights from one rank's losses would differ per rank: refuses torchrun
    state_fields = ("_epoch_weights",)

    def __init__(self, task_names):
        super().__init__(task_names)
        k = len(self.task_names)
        self.register_buffer("weight_sum", torch.zeros(k))
        self.register_buffer("weight_steps", torch.zeros(()))
        self._epoch_weights: Optional[Dict[str, float]] = None

    def loss_weights(self, losses: torch.Tensor, present: torch.Tensor, ctx) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, losses, ctx):
        stacked = torch.stack([losses[t] for t in self.task_names]).float()
        present = stacked.detach() != 0
        w = torch.where(present, self.loss_weights(stacked, present, ctx).detach().float(), 0.0)
        self.weight_sum += w
        self.weight_steps += 1
        total = (stacked * w).sum()
        ctx.backward(total)
        return total.detach()

    def epoch_end(self, train_losses):
        steps = float(self.weight_steps)
        if steps:
            self._epoch_weights = dict(zip(self.task_names, (self.weight_sum / steps).tolist()))
        self.weight_sum.zero_()
        self.weight_steps.zero_()
        return {}

    def initial_weights(self) -> Dict[str, float]:
        return {t: 1.0 for t in self.task_names}

    def weights(self):
        """Mean per-task weight over the steps of the last finished epoch."""
        return dict(self._epoch_weights) if self._epoch_weights is not None else self.initial_weights()


def positive_float(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a float, or one line naming ``balancer.<name>``."""
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"balancer.{name} must be {'>= 0' if allow_zero else '> 0'} (got {value!r})")
    return v
