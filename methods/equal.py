"""Equal weights: Σ_k L_k."""
import torch

from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import BALANCERS


@BALANCERS.register("equal")
class Equal(Balancer):
    """Σ_k L_k (every task weighted 1)."""

    def combine(self, losses):
        return torch.stack([losses[t] for t in self.task_names]).sum()

    def weights(self):
        return {t: 1.0 for t in self.task_names}
