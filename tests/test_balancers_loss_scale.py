"""Loss-scale balancers (GLS, RLW, FAMO, STCH, GradNorm) on hand-checkable cases.

Each case uses a shared parameter θ = 0 and losses L_k = g_k·θ + c_k, so ∇L_k = g_k and
L_k = c_k exactly; ``backward`` then leaves θ.grad = Σ_k w_k g_k, and w can be read off.
Reference comparisons re-implement the published update (the authors' FAMO class, the
authors' STCH loss) in the test and run it on the same inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from mtlbench.core.balancer import BalancerContext
from mtlbench.core.registry import BALANCERS, load_all

load_all()


def step(bal, grads, losses, epoch=1, last_shared=False):
    """One ``backward``; returns θ.grad (= Σ_k w_k g_k)."""
    grads = torch.as_tensor(grads, dtype=torch.float32)
    theta = torch.nn.Parameter(torch.zeros(grads.shape[1]))
    names = bal.task_names
    L = {t: grads[k] @ theta + float(losses[k]) for k, t in enumerate(names)}
    ctx = BalancerContext(task_names=names, shared=[theta], last_shared=[theta] if last_shared else [], epoch=epoch)
    bal.backward(L, ctx)
    return theta.grad


def weights_of(bal, losses, **kw):
    """The per-task weights w of one step (identity gradients: θ.grad = w)."""
    k = len(losses)
    return step(bal, torch.eye(k), losses, **kw)


# ----------------------------------------------------------------------------- GLS
def test_gls_is_the_gradient_of_the_geometric_mean_and_skips_absent_tasks():
    bal = BALANCERS.get("gls")(["a", "b", "c"])
    L = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    L.prod().pow(1 / 3).backward()                       # (Π L)^(1/K), by autograd
    w1 = weights_of(bal, [0.5, 2.0, 8.0])
    torch.testing.assert_close(w1, L.grad)
    torch.testing.assert_close(w1, torch.tensor([4 / 3, 1 / 3, 1 / 12]))  # ∛8 = 2, w_k = 2/(3 L_k)
    w2 = weights_of(bal, [0.5, 0.0, 2.0])                 # b absent: the geometric mean of a and c
    torch.testing.assert_close(w2, torch.tensor([1.0, 0.0, 0.25]))  # √(0.5·2) = 1, 1/(2·0.5), 1/(2·2)
    assert bal.epoch_end({}) == {}
    assert bal.weights() == pytest.approx(dict(zip("abc", ((w1 + w2) / 2).tolist())))


# ----------------------------------------------------------------------------- RLW
def test_rlw_normal_draws_softmax_of_a_normal_from_its_own_generator():
    torch.manual_seed(3)
    bal = BALANCERS.get("rlw")(["a", "b", "c"])
    twin = torch.Generator()
    twin.set_state(bal.generator.get_state())
    state = torch.get_rng_state()
    for _ in range(3):
        torch.testing.assert_close(weights_of(bal, [1.0, 2.0, 3.0]), F.softmax(torch.randn(3, generator=twin), 0))
    assert torch.equal(torch.get_rng_state(), state)      # the global RNG is never drawn during steps
    torch.manual_seed(3)                                   # seeded from the run's seed: the same draws
    assert torch.equal(BALANCERS.get("rlw")(["a", "b", "c"]).generator.get_state(), twin_start(3))
    torch.manual_seed(4)
    assert not torch.equal(BALANCERS.get("rlw")(["a", "b", "c"]).generator.get_state(), twin_start(3))


def twin_start(seed):
    torch.manual_seed(seed)
    return BALANCERS.get("rlw")(["x"]).generator.get_state()


def test_rlw_dirichlet_is_on_the_simplex_with_mean_one_over_k():
    torch.manual_seed(0)
    bal = BALANCERS.get("rlw")(["a", "b", "c", "d"], distribution="dirichlet")
    state = torch.get_rng_state()
    draws = torch.stack([bal.sample() for _ in range(4000)])
    assert torch.equal(torch.get_rng_state(), state)
    assert (draws > 0).all() and torch.allclose(draws.sum(1), torch.ones(4000))
    assert (draws.mean(0) - 0.25).abs().max() < 0.015      # Dir(1): mean 1/K, sd of the mean ~0.003
    assert abs(float(draws[:, 0].var()) - 3 / 80) < 0.004   # Dir(1,1,1,1): var = (K−1)/(K²(K+1)) = 3/80
    with pytest.raises(ValueError, match="balancer.distribution"):
        BALANCERS.get("rlw")(["a"], distribution="uniform")


# ----------------------------------------------------------------------------- FAMO
def test_famo_first_two_steps_follow_the_closed_form():
    bal = BALANCERS.get("famo")(["a", "b"])
    # step 1, losses (1, 2): z = (½, ½), c = ½/1 + ½/2 = 0.75, w_k = z_k / (c L_k) = (2/3, 1/3); no ξ update
    torch.testing.assert_close(weights_of(bal, [1.0, 2.0]), torch.tensor([2 / 3, 1 / 3]))
    assert torch.equal(bal.logits, torch.zeros(2))
    # step 2, losses (0.5, 1.8): δ = (log 2, log(2/1.8)); ∇ξ = z ⊙ (δ − zᵀδ) = ±(log 2 − log(2/1.8))/4;
    # Adam's first step is −lr·∇/(|∇| + eps) = (−0.025, +0.025) (weight decay acts on ξ = 0: nothing)
    g = (math.log(2) - math.log(2 / 1.8)) / 4
    xi = torch.tensor([-0.025 * g / (g + 1e-8), 0.025 * g / (g + 1e-8)])
    z = F.softmax(xi, 0)
    c = z[0] / 0.5 + z[1] / 1.8
    torch.testing.assert_close(weights_of(bal, [0.5, 1.8]), torch.stack([z[0] / (c * 0.5), z[1] / (c * 1.8)]))
    torch.testing.assert_close(bal.logits, xi)
    assert bal.epoch_end({})["z"]["a"] == pytest.approx(float(z[0]), abs=1e-6)


def test_famo_matches_the_authors_update_on_random_losses():
    """The authors' FAMO (Cranial-XIX/FAMO famo.py: torch Adam on ξ, weight decay γ, the
    softmax VJP by autograd), re-implemented here, fed the same loss sequence (ξ updated
    from consecutive steps' losses as this balancer does)."""
    g = torch.Generator().manual_seed(0)
    seq = torch.rand(30, 3, generator=g) * 2 + 0.1
    bal = BALANCERS.get("famo")(["a", "b", "c"], lr=0.025, gamma=1e-3)
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.025, weight_decay=1e-3)
    worst = 0.0
    for t in range(len(seq)):
        if t:
            delta = (seq[t - 1] + 1e-8).log() - (seq[t] + 1e-8).log()
            (d,) = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)
            opt.zero_grad()
            w.grad = d
            opt.step()
        z = F.softmax(w.detach(), -1)
        ref = z / (seq[t] + 1e-8) / (z / (seq[t] + 1e-8)).sum()   # ∂/∂L of Σ z log(L + ε) / c
        got = weights_of(bal, seq[t].tolist())
        worst = max(worst, float((got - ref).abs().max()), float((bal.logits - w.detach()).abs().max()))
    print(f"famo max |diff| vs the authors: {worst:.2e}")
    assert worst < 1e-6, worst


# ----------------------------------------------------------------------------- STCH
def stch_reference(L, nadir, mu=1.0):
    """The authors' STCH loss (Xi-L/STCH, STCH_MTL/LibMTL/weighting/STCH.py), its gradient."""
    L = torch.tensor(L, requires_grad=True)
    logs = torch.log(L / nadir + 1e-20)
    reg = logs - logs.detach().max()
    (mu * torch.log(torch.exp(reg / mu).sum()) * len(L)).backward()
    return L.grad


def test_stch_warms_up_on_log_losses_measures_the_nadir_then_matches_the_authors_loss():
    bal = BALANCERS.get("stch")(["a", "b", "c"], mu=0.5, warmup_epochs=2)
    torch.testing.assert_close(weights_of(bal, [0.5, 2.0, 4.0], epoch=1), torch.tensor([2.0, 0.5, 0.25]))
    assert bal.epoch_end({})["phase"] == "warmup" and int(bal.nadir_count.sum()) == 0
    weights_of(bal, [1.0, 2.0, 3.0], epoch=2)               # the last warm-up epoch: nadir = mean loss
    weights_of(bal, [3.0, 0.0, 5.0], epoch=2)               # b absent: not in its average
    state = bal.epoch_end({})
    assert state["nadir"] == pytest.approx({"a": 2.0, "b": 2.0, "c": 4.0})
    for L in ([1.0, 1.5, 3.0], [0.2, 3.0, 1.0]):
        torch.testing.assert_close(weights_of(bal, L, epoch=3), stch_reference(L, torch.tensor([2.0, 2.0, 4.0]), 0.5))
    assert bal.epoch_end({})["phase"] == "stch"


# ----------------------------------------------------------------------------- GradNorm
def test_gradnorm_weight_update_matches_a_hand_computation():
    bal = BALANCERS.get("gradnorm")(["a", "b"], alpha=1.5, lr=0.025)
    # step 1: ‖∇_W L‖ = (3, 1), L = L(0): r = (1, 1); G = w·n = (3, 1), Ḡ = 2, targets (2, 2);
    # ∂L_grad/∂w = sign(G − target)·n = (3, −1); Adam's first step moves w by −0.025·sign: (0.975, 1.025)
    grad = step(bal, [[3.0, 0.0], [0.0, 1.0]], [1.0, 2.0], last_shared=True)
    torch.testing.assert_close(grad, torch.tensor([3.0, 1.0]))            # this step used w = (1, 1)
    torch.testing.assert_close(bal.w, torch.tensor([0.975, 1.025]))
    # step 2: L = (0.25, 1.5): L̃ = (0.25, 0.75), r = (0.5, 1.5); G = (0.975·3, 1.025·1), Ḡ = 1.975;
    # targets Ḡ·r^1.5 = (0.698, 3.629): signs (+, −) again, ∂ = (3, −1); Adam's second step with
    # m = 0.1·(1.9·g), v: a move of lr·m̂/(√v̂ + eps) = 0.025 per weight again
    grad = step(bal, [[3.0, 0.0], [0.0, 1.0]], [0.25, 1.5], last_shared=True)
    torch.testing.assert_close(grad, torch.tensor([0.975 * 3, 1.025]))
    torch.testing.assert_close(bal.w, torch.tensor([0.95, 1.05]))
    assert float(bal.w.sum()) == pytest.approx(2.0)
    bal.epoch_end({})
    assert bal.weights() == pytest.approx({"a": 0.9875, "b": 1.0125})     # mean of the weights used


def test_gradnorm_keeps_weights_non_negative_and_summing_to_k_without_shared_layer_stays_equal():
    bal = BALANCERS.get("gradnorm")(["a", "b", "c"], lr=0.6)
    for _ in range(5):  # a dominant task: its weight is pushed down hard, clipped at 0
        step(bal, [[100.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 1.0, 1.0], last_shared=True)
        assert (bal.w >= 0).all() and float(bal.w.sum()) == pytest.approx(3.0)
    assert float(bal.w[0]) < 0.5
    flat = BALANCERS.get("gradnorm")(["a", "b"])
    torch.testing.assert_close(step(flat, [[3.0, 0.0], [0.0, 1.0]], [1.0, 2.0]), torch.tensor([3.0, 1.0]))
    assert torch.equal(flat.w, torch.ones(2))
