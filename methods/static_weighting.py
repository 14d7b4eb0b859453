"""Fixed loss weights: ``equal`` (Σ_k L_k) and ``static`` (Σ_k λ_k L_k, λ from config)."""
from typing import Dict, Optional

import torch

from mtlbench.balancers import Balancer
from mtlbench.registry import BALANCERS


@BALANCERS.register("static")
class Static(Balancer):
    """``weights``: {task: λ}; tasks not named get ``default`` (1.0)."""

    def __init__(self, task_names, weights: Optional[Dict[str, float]] = None, default: float = 1.0):
        super().__init__(task_names)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.task_names))
        if unknown:
            raise ValueError(f"balancer.weights names unknown task(s) {unknown}; tasks: {self.task_names}")
        self.fixed = {t: float(weights.get(t, default)) for t in self.task_names}
        self.register_buffer("_w", torch.tensor([self.fixed[t] for t in self.task_names]))

    def combine(self, losses):
        return torch.stack([losses[t] for t in self.task_names]) @ self._w.to(next(iter(losses.values())).dtype)

    def weights(self):
        return dict(self.fixed)


@BALANCERS.register("equal")
class Equal(Balancer):
    """Σ_k L_k (every task weighted 1)."""

    def combine(self, losses):
        return torch.stack([losses[t] for t in self.task_names]).sum()

    def weights(self):
        return {t: 1.0 for t in self.task_names}
