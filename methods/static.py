"""Fixed loss weights: Σ_k λ_k L_k, λ from the config (``balancer.weights``)."""
from typing import Dict, Optional

import torch

from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import BALANCERS


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
