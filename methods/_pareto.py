"""Helpers of the Pareto balancers (not a registered method): the Euclidean projection onto
the probability simplex; per-task simplex state restricted to the tasks present in a batch
(an absent task keeps its entry; the present ones are updated on their own simplex and put
back with the mass they held); the norm clip of a shared update and ``ClippedBalancer``, the
base of the methods that clip it (Nash-MTL, FairGrad, SDMGrad)."""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """argmin_{x ∈ Δ} ‖x − v‖ (Δ = {x ≥ 0, Σ x = 1}), by sorting (Held, Wolfe & Crowder
    1974; the routine of SDMGrad's and MoDo's code): x = max(v − θ, 0) with θ from the largest
    k such that u_k − (Σ_{j≤k} u_j − 1)/k > 0 (u sorted decreasingly)."""
    v = v.double()
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / k > 0).flatten()[-1])
    theta = css[rho] / (rho + 1)
    return torch.clamp(v - theta, min=0.0)


def restrict(state: torch.Tensor, idx: torch.Tensor):
    """(the present tasks' entries renormalised to sum 1, the mass they held)."""
    sub = state[idx].double()
    mass = float(sub.sum())
    if not mass > 0:
        return torch.full_like(sub, 1.0 / len(sub)), 0.0
    return sub / mass, mass


def put_back(state: torch.Tensor, idx: torch.Tensor, sub: torch.Tensor, mass: float) -> None:
    """Write the updated sub-simplex back with the mass the present tasks held (all of it when
    every task is present); a zero mass (every present task had weight 0) gets its share 1/T."""
    if len(idx) == len(state):
        state.copy_(sub.to(state.dtype))
        return
    if not mass > 0:
        mass = len(idx) / len(state)
    state[idx] = (sub * mass).to(state.dtype)
    state.div_(state.sum())


def clip(d: torch.Tensor, w: torch.Tensor, max_norm: float):
    """(d, w, clipped): d scaled to norm ``max_norm`` when longer, with the factor of
    ``torch.nn.utils.clip_grad_norm_`` (max_norm / (‖d‖ + 1e-6)); w (the effective per-task
    weights, d = Σ w_i g_i) scaled alike. ``max_norm`` 0: no clip."""
    if max_norm > 0:
        norm = float(d.norm())
        if norm > max_norm:
            c = max_norm / (norm + 1e-6)
            return d * c, w * c, True
    return d, w, False


class ClippedBalancer(GradientBalancer):
    """A gradient balancer whose shared update is clipped to norm ``self.max_norm`` (0: no
    clip; set by the subclass); the clipped steps are counted and logged per epoch as
    ``clipped_steps`` (and kept in checkpoints)."""

    state_fields = GradientBalancer.state_fields + ("_clipped",)

    def __init__(self, task_names, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.max_norm = 0.0
        self._clipped = 0

    def clipped(self, d: torch.Tensor, w: torch.Tensor):
        """``clip(d, w, max_norm)`` without its flag, counted."""
        d, w, was = clip(d, w, self.max_norm)
        self._clipped += int(was)
        return d, w

    def epoch_end(self, train_losses):
        state = super().epoch_end(train_losses)
        state["clipped_steps"] = self._clipped
        self._clipped = 0
        return state
