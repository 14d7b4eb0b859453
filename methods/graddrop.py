"""GradDrop, gradient sign dropout (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask
Models with Gradient Sign Dropout", NeurIPS 2020). The authors published no code; compared with LibMTL ``LibMTL/weighting/GradDrop.py``
(on the representation) and the parameter-space version in the CAGrad/FAMO authors' code
(Cranial-XIX/CAGrad ``nyuv2/utils.py``, ``graddrop``).

At a layer A shared by the tasks (the shared representation z), with ∇_k the gradient of
task k's loss w.r.t. A (per sample), GradDrop keeps, at every element of A, only the
gradients of one sign, chosen at random with the probability of that sign's share:

    S_k = Σ_batch sign(A) ∘ ∇_k            (sign(A) as the paper: inputs of the layer)
    P = ½ (1 + Σ_k S_k / Σ_k |S_k|)          (P = 1: all tasks push the same way)
    M_k = [P > U]·[S_k > 0] + [P < U]·[S_k < 0],   U ~ Uniform(0, 1) per element
    ∇_A ← Σ_k (ℓ + (1 − ℓ) M_k) ∘ ∇_k        (per sample; ℓ = ``leak``)

and back-propagates ∇_A into the shared parameters. ℓ = 0 (``leak``; the paper's setting
for pure multi-task learning, LibMTL's default). Heads: each head its own loss's gradient
(weight 1).

Mode: ``representation`` (default, the paper) — ∇_k are the per-sample gradients of the
shared representation; or ``parameters`` (the CAGrad/FAMO authors' variant: the masks on
the shared parameters' gradients, S_k = ∇_k, no sign(A)). An architecture without a shared
representation falls back to ``parameters``.

Randomness: U from the balancer's own generator (a state field, seeded from the run's seed;
drawn on the CPU and copied to the device). The 1e-7 in P's denominator follows LibMTL.
DDP: ``distributed = False``. Logged: the base's mean cosine and conflict fraction; the
weights are 1 (GradDrop masks elements, it does not weight tasks).
"""
from __future__ import annotations

import torch

from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import BALANCERS
from mtlbench.methods._loss_weighting import positive_float, run_generator


def graddrop_masks(signed: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """M [T, F] (bool) from the sign-corrected, batch-summed gradients [T, F] and U [F]."""
    purity = 0.5 * (1 + signed.sum(0) / (signed.abs().sum(0) + 1e-7))
    return ((purity > uniform) & (signed > 0)) | ((purity < uniform) & (signed < 0))


@BALANCERS.register("graddrop")
class GradDrop(GradientBalancer):
    """``leak``: ℓ in [0, 1], the fraction of each gradient kept regardless of the mask (0);
    ``mode``: representation | parameters."""

    state_fields = GradientBalancer.state_fields + ("generator",)

    def __init__(self, task_names, leak: float = 0.0, mode: str = "representation"):
        super().__init__(task_names, mode=mode)
        self.leak = positive_float("leak", leak, allow_zero=True)
        if self.leak > 1:
            raise ValueError(f"balancer.leak must be in [0, 1] (got {leak!r})")
        self.generator = run_generator()
        self._rep = None

    def backward(self, losses, ctx):
        rep = ctx.representation
        use = self.mode == "representation" and rep is not None and rep.requires_grad
        self._rep = rep.detach() if use else None
        try:
            return super().backward(losses, ctx)
        finally:
            self._rep = None

    def aggregate(self, grads, losses):
        t = grads.shape[0]
        if self._rep is not None:
            per = grads.view(t, self._rep.shape[0], -1)                # [T, batch, features]
            signed = (per * self._rep.reshape(1, self._rep.shape[0], -1).sign().float()).sum(1)
        else:
            per, signed = grads.view(t, 1, -1), grads
        uniform = torch.rand(signed.shape[1], generator=self.generator).to(grads.device, non_blocking=True)
        keep = self.leak + (1 - self.leak) * graddrop_masks(signed, uniform).float()
        return (per * keep.unsqueeze(1)).sum(0).reshape(-1), None
