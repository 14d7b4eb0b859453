"""Shared part of the gradient balancers whose shared update is a combination of the task
gradients, d = Σ_k c_k g_k (PCGrad, GradVac, CAGrad, IMTL-G, DB-MTL): ``note(c)`` records
the coefficients of the active tasks each step; ``weights()`` reports their mean over the
steps of the last finished epoch (the per-task weight of each gradient in the shared update;
the heads' weights are what ``aggregate`` returns, 1 for these methods unless stated).

``host_gram(G, *extra)``: the float64 Gram matrix G Gᵀ on the host, with optional small
tensors fetched in the same device→host copy (the one sync per step of these methods; their
solvers run on T×T matrices on the host, so their cost beyond the T gradient passes is
O(T²·D) for the Gram matrix plus O(T³) on the host).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from mtlbench.core.gradient import GradientBalancer


def host_gram(G: torch.Tensor, *extra: torch.Tensor):
    """(G Gᵀ as a float64 numpy array, then each of ``extra`` as float64 numpy)."""
    t = G.shape[0]
    parts = [(G @ G.T).reshape(-1)] + [e.reshape(-1).float() for e in extra]
    flat = torch.cat(parts).cpu().double().numpy()
    out, offset = [flat[: t * t].reshape(t, t)], t * t
    for e in extra:
        out.append(flat[offset: offset + e.numel()].reshape(tuple(e.shape)))
        offset += e.numel()
    return out


class CombinationBalancer(GradientBalancer):
    state_fields = GradientBalancer.state_fields + ("_epoch_coef",)

    def __init__(self, task_names, mode: str = "parameters"):
        super().__init__(task_names, mode=mode)
        self.register_buffer("coef_sum", torch.zeros(len(self.task_names)))
        self.register_buffer("coef_steps", torch.zeros(()))
        self._epoch_coef: Optional[Dict[str, float]] = None

    def note(self, coef) -> None:
        """Record this step's coefficients c (one per active task, host or device)."""
        c = torch.as_tensor(coef, dtype=torch.float32).to(self.coef_sum.device)
        self.coef_sum.index_add_(0, self.active_index, c)
        self.coef_steps += 1

    def combine_rows(self, coef, G: torch.Tensor) -> torch.Tensor:
        """Σ_k c_k G_k for host coefficients ``coef`` (recorded with ``note``)."""
        self.note(coef)
        return torch.as_tensor(np.asarray(coef), dtype=G.dtype).to(G.device) @ G

    def epoch_end(self, train_losses):
        steps = float(self.coef_steps)
        if steps:
            self._epoch_coef = dict(zip(self.task_names, (self.coef_sum / steps).tolist()))
        self.coef_sum.zero_()
        self.coef_steps.zero_()
        return super().epoch_end(train_losses)

    def weights(self):
        """Mean coefficient c_k of each task's gradient in the shared update over the last
        finished epoch (1 before any)."""
        if self._epoch_coef is not None:
            return dict(self._epoch_coef)
        return {t: 1.0 for t in self.task_names}
