"""MGDA's task-specific gradients (methods/mgda.py ``heads``): the reference code scales each
head's gradient by α_t (default), the paper's Algorithm 2 updates each head with its own
task's unscaled gradient; the shared parameters get Σ α_t ∇L_t either way."""
import pytest
import torch
from torch import nn

from mtlbench.core.balancer import BalancerContext
from mtlbench.core.registry import BALANCERS

MGDA = BALANCERS.get("mgda")


def _setup():
    torch.manual_seed(0)
    trunk, heads = nn.Linear(3, 4), nn.ModuleDict({t: nn.Linear(4, 1) for t in "ab"})
    x, y = torch.randn(8, 3), {"a": torch.randn(8), "b": 3 * torch.randn(8)}

    def losses():
        z = trunk(x)
        return {t: ((heads[t](z).squeeze(1) - y[t]) ** 2).mean() for t in "ab"}, z

    ctx = BalancerContext(["a", "b"], shared=list(trunk.parameters()),
                          task_specific={t: list(heads[t].parameters()) for t in "ab"})
    return trunk, heads, losses, ctx


@pytest.mark.parametrize("heads_mode", ["scaled", "unscaled"])
def test_mgda_heads_scaled_or_unscaled(heads_mode):
    trunk, heads, losses, ctx = _setup()
    ls, z = losses()
    ctx.representation = z
    b = MGDA(["a", "b"], heads=heads_mode)
    b.backward(ls, ctx)
    alpha = b.weights()
    assert 0 < alpha["a"] < 1 and alpha["a"] + alpha["b"] == pytest.approx(1.0)
    got_trunk = [p.grad.clone() for p in trunk.parameters()]
    got_heads = {t: [p.grad.clone() for p in heads[t].parameters()] for t in "ab"}
    ls, _ = losses()  # by hand: shared Σ α_t ∇L_t; heads α_t ∇L_t (scaled) or ∇L_t (unscaled)
    shared = torch.autograd.grad(alpha["a"] * ls["a"] + alpha["b"] * ls["b"], list(trunk.parameters()),
                                 retain_graph=True)
    for g, h in zip(got_trunk, shared):
        torch.testing.assert_close(g, h)
    for t in "ab":
        own = torch.autograd.grad(ls[t], list(heads[t].parameters()), retain_graph=True)
        scale = alpha[t] if heads_mode == "scaled" else 1.0
        for g, h in zip(got_heads[t], own):
            torch.testing.assert_close(g, scale * h, rtol=1e-5, atol=1e-6)


def test_mgda_heads_option_is_checked():
    with pytest.raises(ValueError, match="balancer.heads"):
        MGDA(["a", "b"], heads="paper")
    assert MGDA(["a", "b"]).heads == "scaled"  # the reference code's form is the default
