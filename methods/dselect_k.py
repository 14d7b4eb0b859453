"""DSelect-k: differentiable top-k selection of experts (Hazimeh, Zhao, Chowdhery, Sathiamoorthy,
Chen, Mazumder, Hong & Chi, "DSelect-k: Differentiable Selection in the Mixture of Experts with
Applications to Multi-Task Learning", NeurIPS 2021). References: the authors' TensorFlow gate,
google-research ``dselect_k_moe/dselect_k_moe.py`` (``SmoothStep``, ``EntropyRegularizer``,
``DSelectKGate``), and LibMTL ``LibMTL/architecture/DSelect_k.py`` (its PyTorch port in an
MMoE: n shared experts, one DSelect-k gate per task).

Per task, k single-expert selectors, each m = ⌈log2 n⌉ binary variables z ∈ [0, 1]^m from the
smooth-step function of logits ℓ (γ = ``gamma``):

    S(ℓ) = 0 (ℓ <= −γ/2),  1 (ℓ >= γ/2),  −2ℓ³/γ³ + 3ℓ/(2γ) + 1/2 otherwise

Selector i puts weight r_i(e) = Π_b (z_ib if bit b of e is 1 else 1 − z_ib) on expert e
(a distribution over the 2^m codes); the expert weights are q = Σ_i softmax(w)_i r_i, so
once every z saturates at 0/1 each selector picks one expert and at most k experts have
non-zero weight. Routing (``routing``): ``example`` (default, LibMTL and the paper's
per-example gate: ℓ = Z h, w = W h on the gate's input h) or ``task`` (static per-task
logits). Initialisation as the reference: ℓ's weights and biases U(−γ/100, γ/100), w's
U(−0.05, 0.05) (Keras' RandomUniform default).

Regularisation (training only), as the reference's ``_add_regularization_loss``:
``entropy_weight`` · Σ −r log(r + 1e−6) over the batch's selector outputs (the reference's
default schedule is the constant 1e−6, LibMTL's too), plus, when n is not a power of 2,
Σ 1 / Σ_e r_i(e) (keeps the selectors off the 2^m − n unreachable codes). The trainer has no
auxiliary-loss input, so the term enters through the gradient: the selector outputs pass
through an identity whose backward adds ∂R/∂r (``regularizer`` below), i.e. exactly the
gradient of task loss + R, once per backward pass through the gate (a per-task gradient
balancer weights it with its task weight). Deviation: the reference (Keras ``add_loss``) and
LibMTL (a ``backward`` inside the forward) add R to every step's objective the same way, but
R is not part of the logged training loss here. LibMTL regularises only its last task's gate
(the loop's last ``selector_outputs``); this regularises every gate, as the reference. Checked
against LibMTL on identical weights (``tests/test_moe_reference.py``): equal outputs, and the
last task's gate gradient with R equal.

Defaults: ``num_experts`` 4, ``k`` 2, ``gamma`` 1.0 (the reference's), ``entropy_weight`` 1e−6.
Experts, trunk, gate inputs: ``methods/_moe.py``. Parameters as MMoE: ``shared_parameters()``
= trunk + experts, ``task_parameters(t)`` adds t's gate (ℓ and w) and head; groups ``trunk``,
``experts``, ``gates``, ``head:<task>``.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from mtlbench.core.model import MTLModel
from mtlbench.core.registry import ARCHS
from mtlbench.methods._moe import ExpertFactory, gate_features, positive
from mtlbench.methods.mmoe import MMoE

EPSILON = 1e-6
ROUTINGS = ("example", "task")


def smooth_step(t: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    cubic = -2.0 / gamma ** 3 * t ** 3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def regularizer(selectors: torch.Tensor, entropy_weight: float, power_of_2: bool) -> torch.Tensor:
    """R = entropy_weight · Σ −r log(r + ε) (+ Σ_i 1 / Σ_e r_i(e) when n is not a power of 2)."""
    r = entropy_weight * -(selectors * torch.log(selectors + EPSILON)).sum()
    if not power_of_2:
        r = r + (1.0 / selectors.sum(-1)).sum()
    return r


class _WithRegularizerGrad(torch.autograd.Function):
    """Identity on the selector outputs whose backward adds ∂R/∂r."""

    @staticmethod
    def forward(ctx, selectors, entropy_weight, power_of_2):
        ctx.save_for_backward(selectors)
        ctx.entropy_weight, ctx.power_of_2 = entropy_weight, power_of_2
        return selectors.clone()

    @staticmethod
    def backward(ctx, grad):
        (sel,) = ctx.saved_tensors
        with torch.enable_grad():
            s = sel.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(regularizer(s, ctx.entropy_weight, ctx.power_of_2), s)
        return grad + g, None, None


class DSelectKGate(nn.Module):
    """forward(h) -> expert weights [B, n] (each row sums to 1 when n is a power of 2)."""

    def __init__(self, in_features: int, n_experts: int, k: int, gamma: float, entropy_weight: float,
                 routing: str = "example", pool: int = 1):
        super().__init__()
        self.k, self.n, self.gamma, self.pool = k, n_experts, float(gamma), pool
        self.entropy_weight, self.routing = float(entropy_weight), routing
        self.m = max(1, math.ceil(math.log2(n_experts)))
        self.power_of_2 = n_experts == 2 ** self.m
        codes = [[(e >> (self.m - 1 - b)) & 1 for b in range(self.m)] for e in range(n_experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool), persistent=False)  # [n, m]
        if routing == "example":
            self.z = nn.Linear(in_features, k * self.m)
            self.w = nn.Linear(in_features, k)
            tensors_z, tensors_w = (self.z.weight, self.z.bias), (self.w.weight, self.w.bias)
        else:
            self.z_logits = nn.Parameter(torch.empty(k, self.m))
            self.w_logits = nn.Parameter(torch.empty(k))
            tensors_z, tensors_w = (self.z_logits,), (self.w_logits,)
        with torch.no_grad():
            for t in tensors_z:
                t.uniform_(-self.gamma / 100, self.gamma / 100)
            for t in tensors_w:
                t.uniform_(-0.05, 0.05)

    def selectors(self, h):
        """(selector outputs r [B, k, n], selector weights softmax(w) [B, k]); with task
        routing B = 1 (one gate for every sample, regularised once per step as the reference)."""
        if self.routing == "example":
            feats = gate_features(h, self.pool)
            logits, w = self.z(feats).view(-1, self.k, 1, self.m), self.w(feats)
        else:
            logits, w = self.z_logits.view(1, self.k, 1, self.m), self.w_logits.view(1, self.k)
        z = smooth_step(logits, self.gamma)
        r = torch.where(self.codes.view(1, 1, self.n, self.m), z, 1.0 - z).prod(-1)
        return r, torch.softmax(w, dim=-1)

    def forward(self, h):
        r, w = self.selectors(h)
        if self.training and torch.is_grad_enabled() and r.requires_grad:
            r = _WithRegularizerGrad.apply(r, self.entropy_weight, self.power_of_2)
        return (w.unsqueeze(-1) * r).sum(1).expand(h.shape[0], -1)


@ARCHS.register("dselect_k")
class DSelectK(MMoE):
    """MMoE's trunk, experts, heads and forward with DSelect-k gates."""

    def __init__(self, backbone_fn, tasks, num_experts: int = 4, k: int = 2, gamma: float = 1.0,
                 entropy_weight: float = 1e-6, routing: str = "example", expert_blocks=1, expert_hidden=None,
                 gate_pool: int = 1):
        MTLModel.__init__(self, tasks)
        n = positive(num_experts, "num_experts", "dselect_k", minimum=2)
        k = positive(k, "k", "dselect_k")
        if not float(gamma) > 0:
            raise ValueError(f"arch.gamma must be > 0 (dselect_k), got {gamma!r}")
        if routing not in ROUTINGS:
            raise ValueError(f"arch.routing must be one of {', '.join(ROUTINGS)} (dselect_k), got {routing!r}")
        f = ExpertFactory(backbone_fn, "dselect_k", expert_blocks, expert_hidden, 1, gate_pool)
        self.assemble(f, n, tasks, {t: DSelectKGate(f.gate_in[0], n, k, gamma, entropy_weight, routing, f.gate_pool)
                                    for t in self.task_names})
