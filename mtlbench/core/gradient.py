"""The base of gradient-manipulation balancers (PCGrad, CAGrad, IMTL-G, Nash-MTL, ...): they
turn the per-task gradients G [T, D] of the shared part into one update d.

``mode`` (a config key of each method, with the method's paper default):

* ``parameters``: G = gradients of the task losses w.r.t. the shared parameters
  (``ctx.shared``, flattened and concatenated); d is written to the shared parameters'
  ``.grad``. Works with every architecture that has shared parameters (not STL) and under
  torchrun (``ctx.grads`` averages the per-task gradients over ranks).
* ``representation``: G = gradients w.r.t. the shared representation z
  (``ctx.representation``, flattened over batch and features, as LibMTL's ``rep_grad``);
  d is back-propagated from z into the shared parameters. Cheaper (only the heads are
  differentiated T times) and needs an architecture with a representation (hard sharing,
  MTAN, AdaShare); per-sample gradients cannot be averaged over ranks, so this mode refuses
  torchrun. Without a representation it falls back to ``parameters`` (recorded per epoch).

Task-specific parameters (heads, attention masks...) get the gradient of Σ_k w_k L_k,
with w the per-task weights the method returns (ones by default: each head its own loss's
gradient, unmodified; MGDA-like methods return their α). The step costs exactly T gradient
passes (each task's gradient w.r.t. the shared part and the task-specific parameters at
once) and no other backward.

Data parallelism: ``distributed = False`` by default (refused under torchrun with one
line); a method whose aggregation is correct on rank-averaged parameter gradients may
declare it after testing it (tests/test_ddp.py).

Absent tasks (a loss of exactly 0 or an all-zero gradient: no labelled sample in the batch)
are left out of the aggregation and get weight 0, so they contribute nothing.

Subclasses implement ``aggregate(G, losses) -> (d, w)`` on the active tasks' rows (float32
on the device; G is never scaled by AMP); during the call ``self.active_index`` holds which
tasks those rows are (indices into ``task_names``; a non-persistent buffer), for methods with
per-task state. Logged per epoch: the mean per-task weights (``weights()``), and in
``balancer``: the mode(s) used, the mean pairwise cosine of the task gradients and the
fraction of conflicting pairs (cosine < 0).
"""
from __future__ import annotations

from typing import ClassVar, Dict, Optional, Tuple

import torch

from mtlbench.core.balancer import Balancer, BalancerContext

MODES = ("parameters", "representation")


class GradientBalancer(Balancer):
    distributed = False
    modes: ClassVar[Tuple[str, ...]] = MODES       # the modes the method is defined for
    state_fields = ("_mode_counts", "_epoch_weights")

    def __init__(self, task_names, mode: str = "parameters"):
        super().__init__(task_names)
        if mode not in self.modes:
            raise ValueError(f"balancer.mode must be one of {list(self.modes)} (got {mode!r})")
        self.mode = mode
        self.needs_representation = mode == "representation"
        k = len(self.task_names)
        self.register_buffer("weight_sum", torch.zeros(k))
        self.register_buffer("stats", torch.zeros(3))  # cosine sum, conflicting pairs, pairs
        self.register_buffer("steps", torch.zeros(()))
        self.register_buffer("active_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self._mode_counts: Dict[str, int] = {}
        self._epoch_weights: Optional[Dict[str, float]] = None

    def aggregate(self, grads: torch.Tensor, losses: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(d [D], w [T'] or None) from the active tasks' gradients [T', D] and losses [T']."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    def backward(self, losses: Dict[str, torch.Tensor], ctx: BalancerContext) -> torch.Tensor:
        """T gradient passes, no other backward: each task's gradient w.r.t. the shared part
        and the task-specific parameters at once; the shared part aggregated into d, the
        task-specific part weighted by w."""
        L = [losses[t] for t in self.task_names]
        stacked = torch.stack(L)
        rep = ctx.representation if self.mode == "representation" else None
        shared = [rep] if rep is not None and rep.requires_grad else list(ctx.shared)
        mode = "representation" if shared and shared[0] is rep else "parameters"
        self._mode_counts[mode] = self._mode_counts.get(mode, 0) + 1
        own = [list(ctx.task_specific.get(t, [])) for t in self.task_names]
        G, head_grads = ctx.task_grads(L, shared, own)  # one pass per task: shared part + its own
        if ctx.world_size > 1:  # the global batch's gradients (a method that declares distributed)
            G = ctx.reduce_mean(G)
            head_grads = [[None if g is None else ctx.reduce_mean(g) for g in gs] for gs in head_grads]
        n_shared = G.shape[1]
        active = ((G.norm(dim=1) > 0) | (n_shared == 0)) & (stacked.detach() != 0)
        idx = torch.nonzero(active).flatten()  # one small sync: which tasks take part
        w_full = active.float()
        d = torch.zeros(n_shared, device=G.device)
        if len(idx) and n_shared:
            self.active_index = idx
            Ga = G if len(idx) == len(L) else G[idx]
            d, w = self.aggregate(Ga, stacked.detach().float()[idx])
            if w is not None:
                w_full = torch.zeros_like(w_full).index_copy(0, idx, w.float())
            self._record(Ga, w_full)
        for k, params in enumerate(own):
            if params:
                ctx.set_grads(params, head_grads[k], w_full[k])
        if mode == "representation":
            ctx.backward_from(rep, d.view_as(rep))
        elif shared:
            ctx.write_grads(shared, d)
        return (stacked * w_full.to(stacked.dtype)).sum().detach()

    def _record(self, G: torch.Tensor, w: torch.Tensor) -> None:
        self.weight_sum += w.float()
        self.steps += 1
        if len(G) > 1:
            gram = G @ G.T  # cosines from the Gram matrix: no normalised copy of G
            norm = gram.diagonal().clamp_min(0).sqrt().clamp_min(1e-30)
            cos = gram / (norm[:, None] * norm[None, :])
            i, j = torch.triu_indices(len(G), len(G), 1, device=G.device)
            c = cos[i, j]
            self.stats += torch.stack([c.sum(), (c < 0).sum().float(), torch.tensor(float(len(c)), device=c.device)])

    # ------------------------------------------------------------------ logging
    def epoch_end(self, train_losses):
        steps = float(self.steps)
        if steps:
            self._epoch_weights = dict(zip(self.task_names, (self.weight_sum / steps).tolist()))
        cos_sum, conflicts, pairs = self.stats.tolist()
        state = {"mode": "+".join(sorted(self._mode_counts)) or "none"}
        if pairs:
            state.update(mean_cosine=cos_sum / pairs, conflict_fraction=conflicts / pairs)
        self.weight_sum.zero_()
        self.stats.zero_()
        self.steps.zero_()
        self._mode_counts = {}
        return state

    def weights(self):
        """Mean per-task weight over the steps of the last finished epoch (1 before any)."""
        if self._epoch_weights is not None:
            return dict(self._epoch_weights)
        return {t: 1.0 for t in self.task_names}
