"""MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018; their code: isl-org/MultiObjectiveOptimization).

Each step finds the minimum-norm point of the convex hull of the per-task gradients,

    α* = argmin_{α ∈ Δ_K} ‖Σ_k α_k g_k‖²,   Δ_K = {α ≥ 0, Σ_k α_k = 1},

and back-propagates Σ_k α*_k L_k. α* is a common descent direction for all tasks, or 0 at a
Pareto-stationary point.

Task-specific parameters (``heads``): ``scaled`` (the default, as the reference code,
``multi_task/train_multi_task.py``: ``loss = Σ_t scale[t]·loss_t; loss.backward()``, so task
t's head receives α_t·∇L_t) or ``unscaled`` (the paper's Algorithm 2: θ^t ← θ^t − η∇_{θ^t}
L^t, each task's own parameters, ``ctx.task_specific[t]``, get their task's unscaled
gradient; the shared parameters still get Σ_k α_k ∇L_k). ``unscaled`` costs one extra
backward per task through its own parameters only.

Which gradients g_k (recorded per epoch as ``balancer.mode``):

* ``representation`` (MGDA-UB, the paper's "upper bound"): gradients of L_k w.r.t. the
  shared representation z = ``ctx.representation`` (the tensor every head depends on, from
  the current forward pass: hard sharing's backbone output, AdaShare's warm-up backbone
  output), flattened over batch and features into one vector per task,
  as in their code. Only the heads are differentiated: K cheap backward passes.
* ``parameters`` (plain MGDA): when the architecture has no shared representation
  (cross-stitch), or with ``mode: parameters``, gradients w.r.t. the shared parameters
  ``ctx.shared`` (also MTAN and cross-stitch, which have no single shared tensor); the Gram
  matrix is accumulated parameter by parameter (no concatenated copy of the gradients).
* ``equal``: no shared representation and no shared parameter (independent networks):
  α_k = 1/K, the simplex centre (the weights still sum to 1).

Gradient normalisation (``normalization``, their ``gradient_normalizers``, applied to
g_k before the solver; α then weights the raw losses): ``none`` (g_k), ``l2``
(g_k/‖g_k‖), ``loss`` (g_k/L_k), ``loss+`` (g_k/(L_k·‖g_k‖)). Default ``none``: the
setting the authors report for MultiMNIST (isl-org/MultiObjectiveOptimization issue #14;
their CelebA sample config uses ``loss+``). Deviation: the reference's
``gradient_normalizers`` (``min_norm_solvers.py``) divide by the signed loss L_k
(``gn[t] = losses[t]``); mtlbench divides by |L_k|, so that a negative loss (e.g. a
log-likelihood) does not flip its gradient. For positive losses (cross-entropy, L1/L2)
both are the same.

Absent tasks: a task whose loss is exactly 0 on the batch (no labelled sample) or whose
gradient is identically 0 (its loss does not reach the shared tensor) is excluded from
the solver and gets α_k = 0 (counted per epoch in ``balancer.excluded``); otherwise its
zero vector would be the min-norm point and stall every task. If every task is
excluded, α is uniform (the loss, hence the update, is zero anyway).

Solver (own implementation, float64 on the host): K = 1 → α = 1; K = 2 → the analytic
minimiser of ‖c·g_1 + (1−c)·g_2‖² over c ∈ [0, 1] (exact 0/1 at the ends, where their
code uses 0.001/0.999; for identical gradients, where every c gives the same point, c = 0.5
where their code takes 0.999: the same min-norm vector, but both tasks' heads keep learning); K ≥ 3 → started at the best pair (as their code does), then
Frank-Wolfe with away steps and exact line search, stopped when the duality gap
max_i (αᵀGα − (Gα)_i) ≤ ``tol``·max_i G_ii or after ``max_iter`` iterations.

Precision and syncs: gradients may come out of autocast in half precision; the Gram
matrix is formed in float32 and solved in float64. α is invariant to a common scale of
all gradients (e.g. a loss scaler). The solver needs the K×K Gram matrix and the K
losses on the host: one device→host copy per step, the price of a gradient method.
The per-epoch statistics (α sum, step and exclusion counts) are device buffers.
``weights()`` is the mean α over the steps of the epoch that just finished.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import BALANCERS

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_pair(a: float, b: float, d: float) -> Tuple[float, float]:
    """argmin_{c ∈ [0,1]} ‖c·x + (1−c)·y‖² given a = ⟨x,x⟩, b = ⟨x,y⟩, d = ⟨y,y⟩;
    returns (c, the squared norm there)."""
    denom = a + d - 2.0 * b  # ‖x − y‖²
    if denom <= 0.0:          # x = y: every c gives the same point; take the centre (symmetric tie)
        c = 0.5
    else:
        c = min(max((d - b) / denom, 0.0), 1.0)
    return c, c * c * a + 2.0 * c * (1.0 - c) * b + (1.0 - c) ** 2 * d


def min_norm_weights(gram, max_iter: int = 250, tol: float = 1e-10) -> Tuple[np.ndarray, float]:
    """α ∈ simplex minimising αᵀGα for a K×K Gram matrix G; returns (α, αᵀGα)."""
    g = np.asarray(gram, dtype=np.float64)
    k = g.shape[0]
    if k == 1:
        return np.ones(1), float(g[0, 0])
    best = None
    for i in range(k):
        for j in range(i + 1, k):
            c, cost = min_norm_pair(g[i, i], g[i, j], g[j, j])
            if best is None or cost < best[0]:
                best = (cost, i, j, c)
    alpha = np.zeros(k)
    _, i, j, c = best
    alpha[i], alpha[j] = c, 1.0 - c
    if k == 2:
        return alpha, float(alpha @ g @ alpha)
    scale = max(float(np.max(np.diag(g))), 1e-300)
    for _ in range(max_iter):
        grad = g @ alpha                       # ∇(½αᵀGα)
        cur = float(alpha @ grad)
        s = int(np.argmin(grad))
        fw_gap = cur - grad[s]
        if fw_gap <= tol * scale:
            break
        support = np.flatnonzero(alpha > 0)
        v = int(support[np.argmax(grad[support])])
        away_gap = grad[v] - cur
        away = not (fw_gap >= away_gap or alpha[v] >= 1.0)
        if not away:
            direction = -alpha.copy()
            direction[s] += 1.0
            gmax = 1.0
        else:
            direction = alpha.copy()
            direction[v] -= 1.0
            gmax = alpha[v] / (1.0 - alpha[v])
        curv = float(direction @ g @ direction)
        slope = float(grad @ direction)
        gamma = gmax if curv <= 0.0 else min(max(-slope / curv, 0.0), gmax)
        alpha = alpha + gamma * direction
        if away and gamma == gmax:
            alpha[v] = 0.0                     # a drop step removes v from the support exactly
        alpha = np.clip(alpha, 0.0, None)
        alpha /= alpha.sum()
    return alpha, float(alpha @ g @ alpha)


MODES = ("auto", "representation", "parameters")
HEADS = ("scaled", "unscaled")


def _flat(grads: Sequence[Optional[torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    return torch.stack([(torch.zeros_like(like) if gr is None else gr).reshape(-1).float() for gr in grads])


def _grads(loss: torch.Tensor, inputs: List[torch.Tensor]):
    if not loss.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True))


@BALANCERS.register("mgda")
class MGDA(Balancer):
    """``normalization``: none | l2 | loss | loss+ (see module docstring); ``mode``: auto (the
    representation when the architecture has one, else the shared parameters) |
    representation | parameters; ``heads``: scaled (reference code, default) | unscaled
    (the paper's Algorithm 2); ``max_iter`` and ``tol``: the Frank-Wolfe budget and
    stopping tolerance (K ≥ 3 tasks)."""

    distributed = False  # the Gram matrix of one rank's shard: refuses torchrun (mtlbench.engine.distributed)
    state_fields = ("_modes", "_norm_sum", "_norm_steps", "_epoch_weights")

    def __init__(self, task_names, normalization: str = "none", max_iter: int = 250, tol: float = 1e-10,
                 mode: str = "auto", heads: str = "scaled"):
        super().__init__(task_names)
        if heads not in HEADS:
            raise ValueError(f"balancer.heads must be one of {list(HEADS)} (got {heads!r})")
        self.heads = heads
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"balancer.normalization must be one of {list(NORMALIZATIONS)} (got {normalization!r})")
        if mode not in MODES:
            raise ValueError(f"balancer.mode must be one of {list(MODES)} (got {mode!r})")
        self.mode = mode
        self.needs_representation = mode != "parameters"
        self.normalization, self.max_iter, self.tol = normalization, int(max_iter), float(tol)
        k = len(self.task_names)
        self.register_buffer("alpha_sum", torch.zeros(k))
        self.register_buffer("excluded", torch.zeros(k))
        self.register_buffer("steps", torch.zeros(()))
        self._modes: Dict[str, int] = {}
        self._norm_sum, self._norm_steps = 0.0, 0
        self._epoch_weights: Optional[Dict[str, float]] = None

    # ----------------------------------------------------------------- gradients
    def _gram(self, losses: List[torch.Tensor], ctx) -> Tuple[Optional[torch.Tensor], str]:
        """The K×K float32 Gram matrix of the task gradients and the mode used."""
        rep = ctx.representation
        if self.mode != "parameters" and isinstance(rep, torch.Tensor) and rep.requires_grad:
            grads = [_grads(l, [rep])[0] for l in losses]
            if any(gr is not None for gr in grads):
                flat = _flat(grads, rep)
                return flat @ flat.T, "representation"
        if self.mode == "representation":
            raise ValueError("balancer.mode=representation: this architecture gives no shared representation; "
                             "use balancer.mode=auto or parameters")
        params = [p for p in ctx.shared if p.requires_grad]
        if params:
            per_task = [_grads(l, params) for l in losses]
            gram, used = None, False
            for i, p in enumerate(params):
                cols = [gr[i] for gr in per_task]
                if all(c is None for c in cols):
                    continue
                flat = _flat(cols, p)
                gram = flat @ flat.T if gram is None else gram + flat @ flat.T
                used = True
            if used:
                return gram, "parameters"
        return None, "equal"

    def solve(self, gram: np.ndarray, loss: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
        """(α, active mask, ‖Σ α_k ĝ_k‖) from the host Gram matrix and losses (ĝ: normalised)."""
        k = len(loss)
        diag = np.diag(gram)
        active = (loss != 0) & np.isfinite(loss) & (diag > 0) & np.isfinite(diag)
        if not active.any():
            return np.full(k, 1.0 / k), active, float("nan")
        idx = np.flatnonzero(active)
        norm = {"none": np.ones(len(idx)), "l2": np.sqrt(diag[idx]), "loss": np.abs(loss[idx]),
                "loss+": np.abs(loss[idx]) * np.sqrt(diag[idx])}[self.normalization]
        sub = gram[np.ix_(idx, idx)] / np.outer(norm, norm)
        alpha = np.zeros(k)
        if not np.isfinite(sub).all():
            alpha[idx] = 1.0 / len(idx)
            return alpha, active, float("nan")
        alpha[idx], cost = min_norm_weights(sub, self.max_iter, self.tol)
        return alpha, active, math.sqrt(max(cost, 0.0))

    # ----------------------------------------------------------------- interface
    def backward(self, losses, ctx):
        stacked = torch.stack([losses[t] for t in self.task_names])
        k, dev = len(self.task_names), stacked.device
        gram, mode = self._gram([losses[t] for t in self.task_names], ctx)
        if gram is None:
            alpha = torch.full((k,), 1.0 / k, device=dev)
        else:
            host = torch.cat([gram.reshape(-1), stacked.detach().float()]).cpu().double().numpy()  # the one sync
            a, active, min_norm = self.solve(host[: k * k].reshape(k, k), host[k * k:])
            packed = torch.from_numpy(np.concatenate([a, ~active])).float().to(dev)
            alpha = packed[:k]
            self.excluded += packed[k:]
            if math.isfinite(min_norm):
                self._norm_sum, self._norm_steps = self._norm_sum + min_norm, self._norm_steps + 1
        self._modes[mode] = self._modes.get(mode, 0) + 1
        self.alpha_sum += alpha
        self.steps += 1
        total = (stacked.float() * alpha).sum()
        own = self._own_gradients(losses, ctx) if self.heads == "unscaled" else []
        ctx.backward(total)  # the AMP loss scale (fp16) applies to the final backward only
        for p, g in own:     # the paper: each task's own parameters get its unscaled gradient
            p.grad = g * ctx.scale()
        return total.detach()

    def _own_gradients(self, losses, ctx) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, ∇_θt L_t) for every task-specific parameter θ_t its task's loss reaches."""
        out = []
        for t in self.task_names:
            params = [p for p in ctx.task_specific.get(t, []) if p.requires_grad]
            if params and losses[t].requires_grad:
                grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
                out += [(p, g) for p, g in zip(params, grads) if g is not None]
        return out

    def _mean_alpha(self) -> Optional[Dict[str, float]]:
        steps = float(self.steps)
        if steps == 0:
            return None
        return dict(zip(self.task_names, (self.alpha_sum / steps).tolist()))

    def epoch_end(self, train_losses):
        self._epoch_weights = self._mean_alpha()
        state = {"mode": "+".join(sorted(self._modes)) or "none", "steps": int(self.steps),
                 "excluded": dict(zip(self.task_names, [int(v) for v in self.excluded.tolist()]))}
        if self._norm_steps:
            state["min_norm"] = self._norm_sum / self._norm_steps
        self.alpha_sum.zero_()
        self.excluded.zero_()
        self.steps.zero_()
        self._modes, self._norm_sum, self._norm_steps = {}, 0.0, 0
        return state

    def weights(self):
        """Mean α over the steps of the last finished epoch (before any: the running mean,
        or 1/K before any step)."""
        if self._epoch_weights is not None:
            return dict(self._epoch_weights)
        return self._mean_alpha() or {t: 1.0 / len(self.task_names) for t in self.task_names}
