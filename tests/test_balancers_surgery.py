"""Gradient-surgery and Pareto balancers (PCGrad, GradVac, CAGrad, IMTL, DB-MTL, GradDrop) on
given task gradients: orthogonal, conflicting at 120°, one dominant, random.

θ = 0 is the shared parameter and L_k = g_k·θ + c_k, so the per-task gradients are exactly
the rows g_k given and ``backward`` leaves the update d in θ.grad. Reference comparisons
re-implement the reference update in the test (LibMTL's / the authors' formulas, on
D-vectors, with the same random task orders) and run it on the same inputs."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtlbench.core.balancer import BalancerContext
from mtlbench.core.registry import BALANCERS, load_all

load_all()
S3 = math.sqrt(3.0)
ORTHOGONAL = [[1.0, 0.0], [0.0, 2.0]]
AT_120 = [[1.0, 0.0], [-1.0, S3]]            # |g_2| = 2, cos = −½
DOMINANT = [[10.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.5, -1.0, 1.0]]


def update(bal, grads, losses=None, representation=None):
    grads = torch.as_tensor(grads, dtype=torch.float32)
    theta = torch.nn.Parameter(torch.zeros(grads.shape[1]))
    losses = [1.0] * len(grads) if losses is None else losses
    L = {t: grads[k] @ theta + float(losses[k]) for k, t in enumerate(bal.task_names)}
    bal.backward(L, BalancerContext(task_names=bal.task_names, shared=[theta], representation=representation))
    return theta.grad


def make(name, k, **kw):
    return BALANCERS.get(name)([f"t{i}" for i in range(k)], **kw)


def orders_of(generator, t, steps=1):
    """The task orders a surgery balancer will draw next from ``generator`` (a copy)."""
    twin = torch.Generator()
    twin.set_state(generator.get_state())
    return [[torch.randperm(t, generator=twin).tolist() for _ in range(t)] for _ in range(steps)]


def rand_grads(seed, t=4, d=30):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    signs = torch.tensor([(-1.0) ** k for k in range(t)]).unsqueeze(1)
    return (torch.randn(t, d, generator=g) + 0.8 * signs * base).double()  # alternate tasks conflict


# ----------------------------------------------------------------------------- PCGrad
def test_pcgrad_removes_exactly_the_conflicting_component():
    torch.testing.assert_close(update(make("pcgrad", 2), ORTHOGONAL), torch.tensor([1.0, 2.0]))
    d = update(make("pcgrad", 2), AT_120)
    # g1 − (g1·g2/|g2|²) g2 = (1,0) + ¼(−1, √3);  g2 − (g2·g1/|g1|²) g1 = (0, √3)
    torch.testing.assert_close(d, torch.tensor([0.75, S3 / 4 + S3]))
    pc1, pc2 = torch.tensor([0.75, S3 / 4]), torch.tensor([0.0, S3])
    assert abs(float(pc1 @ torch.tensor(AT_120[1]))) < 1e-6 and abs(float(pc2 @ torch.tensor(AT_120[0]))) < 1e-6


def pcgrad_reference(G, orders):
    """Yu et al. Algorithm 1 on D-vectors (as LibMTL's loop, over the other tasks)."""
    pc = G.clone()
    for i in range(len(G)):
        for j in orders[i]:
            if j != i and pc[i] @ G[j] < 0:
                pc[i] = pc[i] - (pc[i] @ G[j]) / (G[j] @ G[j]) * G[j]
    return pc.sum(0)


def test_pcgrad_matches_the_sequential_reference_with_the_same_random_orders():
    worst = 0.0
    for seed in range(5):
        G = rand_grads(seed)
        torch.manual_seed(seed)
        bal = make("pcgrad", 4)
        (orders,) = orders_of(bal.generator, 4)
        state = torch.get_rng_state()
        got = update(bal, G.float()).double()
        assert torch.equal(torch.get_rng_state(), state)     # orders from its own generator only
        ref = pcgrad_reference(G, orders)
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    print(f"pcgrad max relative diff vs the sequential reference: {worst:.2e}")
    assert worst < 1e-5


# ----------------------------------------------------------------------------- GradVac
def gradvac_reference(G, target, orders, beta):
    """LibMTL's GradVac loop (whole-model group) on D-vectors; returns (update, targets)."""
    pc, target = G.clone(), target.clone()
    for i in range(len(G)):
        for j in orders[i]:
            if j == i:
                continue
            rho = (pc[i] @ G[j]) / (pc[i].norm() * G[j].norm() + 1e-8)
            goal = target[i, j]
            if rho < goal:
                w = pc[i].norm() * (goal * (1 - rho ** 2).sqrt() - rho * (1 - goal ** 2).sqrt()) \
                    / (G[j].norm() * (1 - goal ** 2).sqrt() + 1e-8)
                pc[i] = pc[i] + G[j] * w
            target[i, j] = (1 - beta) * goal + beta * rho
    return pc.sum(0), target


def test_gradvac_with_zero_targets_is_pcgrad_and_lifts_the_cosine_to_its_target():
    torch.testing.assert_close(update(make("gradvac", 2), AT_120), torch.tensor([0.75, S3 / 4 + S3]))
    bal = make("gradvac", 2, beta=0.25)
    bal.target.fill_(0.5)                                    # targets: cosine ½
    d = update(bal, ORTHOGONAL)                              # observed cosine 0 < ½: both lifted
    g1, g2 = torch.tensor(ORTHOGONAL)
    # g1^V = g1 + a·g2 with cos(g1^V, g2) = ½: a·2 / |g1 + a g2| = ½ → a = 1/(2√3); likewise for g2
    v1, v2 = g1 + g2 / (2 * S3), g2 + 2 * g1 / S3
    torch.testing.assert_close(d, v1 + v2)
    assert float(v1 @ g2 / (v1.norm() * g2.norm())) == pytest.approx(0.5)
    torch.testing.assert_close(bal.target, torch.tensor([[0.5, 0.375], [0.375, 0.5]]))  # ¾·½ + ¼·0


def test_gradvac_matches_libmtl_over_steps_with_the_same_orders():
    torch.manual_seed(0)
    bal = make("gradvac", 4, beta=0.5)
    target, worst = torch.zeros(4, 4, dtype=torch.float64), 0.0
    for step in range(4):
        G = rand_grads(10 + step)
        (orders,) = orders_of(bal.generator, 4)
        got = update(bal, G.float()).double()
        ref, target = gradvac_reference(G, target, orders, 0.5)
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()),
                    float((bal.target.double() - target).abs().max()))
    print(f"gradvac max diff vs LibMTL's loop: {worst:.2e}")
    assert worst < 1e-5


# ----------------------------------------------------------------------------- CAGrad
def cagrad_reference(G, c, rescale=1):
    """The authors' cagrad (Cranial-XIX/CAGrad nyuv2/utils.py: SLSQP on the dual, default
    tolerances and numerical gradient, ×K to match the summed loss)."""
    A = (G @ G.T).numpy()
    k = len(A)
    g0_norm = math.sqrt(A.mean() + 1e-8)
    x0 = np.ones(k) / k
    cc = c * g0_norm + 1e-8
    res = minimize(lambda x: float(x @ A @ x0 + cc * np.sqrt(x @ A @ x + 1e-8)), x0, bounds=[(0, 1)] * k,
                   constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},))
    w = torch.as_tensor(res.x)
    gw = w @ G
    g = G.mean(0) + cc / (gw.norm() + 1e-8) * gw
    return k * g / {0: 1, 1: 1 + c ** 2, 2: 1 + c}[rescale]


def test_cagrad_with_c_zero_is_the_summed_gradient_and_symmetric_case_in_closed_form():
    for G in (ORTHOGONAL, AT_120, DOMINANT):
        torch.testing.assert_close(update(make("cagrad", len(G), c=0.0), G), torch.tensor(G).sum(0))
    # two orthogonal gradients of equal norm: w* = (½, ½) by symmetry, g_w = ḡ, λ = c:
    # K·ḡ(1 + c)/(1 + c²) with rescale 1
    d = update(make("cagrad", 2, c=0.4, rescale=1), [[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]) * 1.4 / 1.16)


def test_cagrad_is_the_worst_case_optimum_in_its_ball_and_matches_the_authors():
    worst = 0.0
    for seed in range(4):
        G = rand_grads(20 + seed, t=3, d=20)
        got = update(make("cagrad", 3, c=0.4, rescale=1), G.float()).double()
        ref = cagrad_reference(G, 0.4, rescale=1)
        worst = max(worst, float((got - ref).norm() / ref.norm()))
        # d* = got·(1+c²)/K maximises min_k g_kᵀd over ‖d − ḡ‖ ≤ c‖ḡ‖: no sampled point does better
        d_star, gbar = got * 1.16 / 3, G.mean(0)
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(3000, 20, generator=g, dtype=torch.float64)
        points = gbar + 0.4 * gbar.norm() * u / u.norm(dim=1, keepdim=True) * torch.rand(3000, 1, generator=g,
                                                                                          dtype=torch.float64)
        assert float((G @ d_star).min()) >= float((points @ G.T).min(1).values.max()) - 1e-6
    print(f"cagrad max relative diff vs the authors' SLSQP: {worst:.2e}")
    assert worst < 1e-3


# ----------------------------------------------------------------------------- IMTL
def imtl_reference(G):
    """IMTL-G's closed form as in LibMTL / the paper: α_{2:} = g_1 Uᵀ (D Uᵀ)⁻¹."""
    U = G / G.norm(dim=1, keepdim=True)
    D, Ud = G[0:1] - G[1:], U[0:1] - U[1:]
    a = G[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    return torch.cat([1 - a.sum().unsqueeze(0), a])


@pytest.mark.parametrize("G", [ORTHOGONAL, AT_120, DOMINANT], ids=["orthogonal", "120deg", "dominant"])
def test_imtl_g_projects_equally_on_every_unit_task_gradient(G):
    bal = make("imtl", len(G), variant="gradient", mode="parameters")
    d = update(bal, G).double()
    G = torch.tensor(G, dtype=torch.float64)
    proj = (G / G.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj[0].expand_as(proj), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, len(G) * imtl_reference(G) @ G, rtol=1e-5, atol=1e-6)  # α sums to K here


def test_imtl_matches_the_closed_form_on_random_gradients_and_is_uniform_for_identical_ones():
    worst = 0.0
    for seed in range(5):
        G = rand_grads(30 + seed)
        got = update(make("imtl", 4, variant="gradient", mode="parameters"), G.float()).double()
        ref = 4 * imtl_reference(G) @ G
        worst = max(worst, float((got - ref).norm() / ref.norm()))
    print(f"imtl max relative diff vs the closed form: {worst:.2e}")
    assert worst < 1e-5
    bal = make("imtl", 3, variant="gradient", mode="parameters")
    torch.testing.assert_close(update(bal, [[1.0, 2.0]] * 3), torch.tensor([3.0, 6.0]))  # D Uᵀ singular
    bal.epoch_end({})
    assert bal.weights() == pytest.approx({"t0": 1.0, "t1": 1.0, "t2": 1.0})


def test_imtl_l_scales_losses_by_exp_s_and_sets_the_gradient_of_s():
    bal = make("imtl", 2, variant="loss", mode="parameters")
    with torch.no_grad():
        bal.log_scale.copy_(torch.tensor([math.log(2.0), 0.0]))
    torch.testing.assert_close(update(bal, ORTHOGONAL, losses=[0.5, 3.0]), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(bal.log_scale.grad, torch.tensor([2 * 0.5 - 1, 3.0 - 1]))  # e^s L − 1
    update(bal, ORTHOGONAL, losses=[0.5, 0.0])               # t1 absent: s_1 gets no gradient
    torch.testing.assert_close(bal.log_scale.grad, torch.tensor([0.0, 0.0]))
    assert bal.epoch_end({})["loss_scale"] == pytest.approx({"t0": 2.0, "t1": 1.0})


# ----------------------------------------------------------------------------- DB-MTL
def test_db_mtl_one_step_by_hand_and_libmtl_over_steps():
    # log-loss gradients g/L = (1, 0), (0, 3); the bias-corrected EMA at step 1 is g/L itself;
    # α = max‖·‖/‖·‖ = (3, 1): d = 3·(1, 0) + (0, 3)
    torch.testing.assert_close(update(make("db_mtl", 2), [[2.0, 0.0], [0.0, 3.0]], losses=[2.0, 1.0]),
                               torch.tensor([3.0, 3.0]))
    bal, ema, worst = make("db_mtl", 3, beta=0.9), torch.zeros(3, 30, dtype=torch.float64), 0.0
    for t in range(1, 6):  # LibMTL's DB_MTL (no bias correction): d_ref = d · (1 − 0.9^t)
        G, L = rand_grads(40 + t, t=3), torch.rand(3, generator=torch.Generator().manual_seed(t)).double() + 0.5
        got = update(bal, G.float(), losses=L.tolist()).double()
        g = G / (L + 1e-8).unsqueeze(1)
        ema = g + 0.9 * (ema - g)
        norms = ema.norm(dim=1)
        ref = ((norms.max() / (norms + 1e-8)).unsqueeze(1) * ema).sum(0)
        worst = max(worst, float((got * (1 - 0.9 ** t) - ref).norm() / ref.norm()))
    print(f"db_mtl max relative diff vs LibMTL (bias correction factored out): {worst:.2e}")
    assert worst < 1e-5
    with pytest.raises(ValueError, match="balancer.mode"):
        make("db_mtl", 2, mode="representation")


# ----------------------------------------------------------------------------- GradDrop
def test_graddrop_masks_by_sign_purity_and_keeps_agreeing_gradients():
    from mtlbench.methods.graddrop import graddrop_masks

    signed = torch.tensor([[1.0, -1.0], [-3.0, -1.0]])
    # P = ½(1 + ΣS/Σ|S|) = (0.25, 0): with U = ½ both elements keep the negative gradients only
    assert graddrop_masks(signed, torch.tensor([0.5, 0.5])).tolist() == [[False, True], [True, True]]
    assert graddrop_masks(signed, torch.tensor([0.1, 0.0])).tolist() == [[True, False], [False, False]]
    agree = [[1.0, -2.0, 0.5], [3.0, -1.0, 0.25]]
    torch.testing.assert_close(update(make("graddrop", 2, mode="parameters"), agree), torch.tensor(agree).sum(0))
    torch.testing.assert_close(update(make("graddrop", 2, mode="parameters", leak=1.0), AT_120),
                               torch.tensor(AT_120).sum(0))


def test_graddrop_on_the_representation_matches_libmtl_with_the_same_uniforms():
    """LibMTL's GradDrop (per-sample representation gradients, sign of the representation,
    masks shared over the batch) re-implemented here, with U from a copy of our generator."""
    g = torch.Generator().manual_seed(0)
    x, w0, heads = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(3, 6, generator=g)
    torch.manual_seed(1)
    bal = make("graddrop", 3, leak=0.2)
    twin = torch.Generator()
    twin.set_state(bal.generator.get_state())
    W = torch.nn.Parameter(w0.clone())
    z = x @ W.T
    losses = {f"t{k}": ((z @ heads[k]) ** 2).mean() + 0.1 for k in range(3)}
    bal.backward(losses, BalancerContext(task_names=bal.task_names, shared=[W], representation=z))

    W2 = torch.nn.Parameter(w0.clone())
    z2 = x @ W2.T
    per = torch.stack([torch.autograd.grad(((z2 @ heads[k]) ** 2).mean(), z2, retain_graph=True)[0]
                       for k in range(3)])                               # [T, batch, features]
    grads = (per * z2.detach().sign()).sum(1)
    P = 0.5 * (1 + grads.sum(0) / (grads.abs().sum(0) + 1e-7))
    U = torch.rand(P.shape, generator=twin)
    M = (P > U) & (grads > 0) | (P < U) & (grads < 0)
    z2.backward((per * (0.2 + 0.8 * M.float()).unsqueeze(1)).sum(0))
    torch.testing.assert_close(W.grad, W2.grad)
