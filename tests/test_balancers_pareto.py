"""Method-specific checks of the Pareto / gradient balancers of issue 18 part B (the registry
contract tests cover the generic part): each method's stated property on hand-made gradients,
and its update against the reference's formula, rewritten here from the reference code named
in each test (not copied: the same operations, in the reference's order and precision), on
identical random inputs."""
import math
import sys
import warnings
from itertools import combinations

import numpy as np
import pytest
import torch

from mtlbench.core.registry import BALANCERS, load_all

load_all()


def make(name, k=3, **kw):
    return BALANCERS.get(name)([f"t{i}" for i in range(k)], **kw)


def aggregate(bal, grads, losses=None, idx=None):
    """One aggregation as GradientBalancer.backward calls it (all tasks present)."""
    bal.active_index = torch.arange(len(grads)) if idx is None else idx
    return bal.aggregate(grads, torch.ones(len(grads)) if losses is None else losses)


def random_grads(k=3, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(k, d, generator=g)
    grads[1] = -0.6 * grads[0] + 0.4 * grads[1]  # tasks 0 and 1 conflict
    return grads


# ------------------------------------------------------------------ Nash-MTL


def _authors_nash(gtg, nf, niter=20):
    """AvivNavon/nash-mtl NashMTL._init_optim_problem + solve_optimization (their non-DPP
    problem; the solver CLARABEL stands for their ECOS, not installed with cvxpy >= 1.6)."""
    cp = pytest.importorskip("cvxpy")
    k = len(gtg)
    alpha = cp.Variable(shape=(k,), nonneg=True)
    prvs = cp.Parameter(shape=(k,), value=np.ones(k, dtype=np.float32))
    gp = cp.Parameter(shape=(k, k), value=np.eye(k))
    nfp = cp.Parameter(shape=(1,), value=np.array([1.0]))
    phi = (1 / prvs + (1 / (gp @ prvs)) @ gp) @ (alpha - prvs)
    ga = gp @ alpha
    cons = [-cp.log(alpha[i] * nfp) - cp.log(ga[i]) <= 0 for i in range(k)]
    prob = cp.Problem(cp.Minimize(cp.sum(ga) + phi / nfp), cons)
    gp.value, nfp.value = gtg, nf
    alpha_t = np.ones(k, dtype=np.float32)
    for _ in range(niter):
        alpha.value, prvs.value = alpha_t, alpha_t
        with warnings.catch_warnings():  # "not DPP": recompiled at each solve, as theirs
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL", warm_start=True)
        if (alpha.value is None or np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3
                or np.linalg.norm(alpha.value - prvs.value) < 1e-6):
            break
        alpha_t = alpha.value
    return alpha_t


def test_nash_weights_solve_the_bargaining_condition_and_match_the_authors_problem():
    pytest.importorskip("cvxpy")
    bal = make("nash_mtl", max_norm=0.0)
    grads = random_grads()
    d, w = aggregate(bal, grads)
    gram = (grads @ grads.T).double()
    alpha = w.double()
    np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-5)   # G Gᵀ α = 1/α
    torch.testing.assert_close(d, w @ grads)
    gtg = gram.numpy()
    nf = np.linalg.norm(gtg)
    ref = _authors_nash(gtg / nf, np.array([nf]))
    np.testing.assert_allclose(alpha.numpy(), ref, rtol=1e-6)
    clipped = make("nash_mtl")  # max_norm 1: the shared update and the weights scale alike
    d1, w1 = aggregate(clipped, grads * 0.01)
    assert float(d1.norm()) <= 1.0 + 1e-6
    torch.testing.assert_close(d1, w1 @ (grads * 0.01))


def test_nash_without_cvxpy_fails_in_one_line_naming_the_extra(monkeypatch, run_cli, capsys):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(ValueError, match=r"\[pareto\]"):
        make("nash_mtl")
    assert run_cli("balancer=nash_mtl") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pareto" in err[0]


# ------------------------------------------------------------------ Aligned-MTL
def test_aligned_gradients_have_equal_orthogonal_eigen_contributions():
    from mtlbench.methods.aligned_mtl import alignment_weights

    grads = random_grads(k=3, d=10).double()
    b, rank = alignment_weights(grads @ grads.T)
    aligned = b.T @ grads
    lam_min = torch.linalg.eigvalsh(grads @ grads.T)[0]
    assert rank == 3
    torch.testing.assert_close(aligned @ aligned.T, lam_min * torch.eye(3, dtype=torch.float64))
    # rank-deficient (two identical tasks): the aligned gradients stay in the span, equal norms there
    dup = torch.stack([grads[0], grads[0], grads[2]])
    b, rank = alignment_weights(dup @ dup.T)
    assert rank == 2
    s = torch.linalg.eigvalsh(((b.T @ dup) @ (b.T @ dup).T))
    torch.testing.assert_close(s[1:], s[1:].max().expand(2))


def _authors_aligned(grads):
    """SamsungLabs/MTL ProcrustesSolver.apply(grads.T.unsqueeze(0), 'min') and the balancer's
    sum over the aligned gradients (torch.linalg.eigh for the removed torch.symeig)."""
    g = grads.T.unsqueeze(0)
    cov = torch.matmul(g.permute(0, 2, 1), g).mean(0)
    singulars, basis = torch.linalg.eigh(cov)
    tol = torch.max(singulars) * max(cov.shape[-2:]) * torch.finfo().eps
    rank = sum(singulars > tol)
    order = torch.argsort(singulars, dim=-1, descending=True)
    singulars, basis = singulars[order][:rank], basis[:, order][:, :rank]
    weights = basis * torch.sqrt(singulars[-1]).view(1, -1)
    weights = weights / torch.sqrt(singulars).view(1, -1)
    weights = torch.matmul(weights, basis.T)
    return torch.matmul(g, weights.unsqueeze(0))[0].sum(-1), weights.sum(-1)


def test_aligned_mtl_matches_the_authors_solver():
    grads = random_grads(k=4, d=30, seed=3)
    d, w = aggregate(make("aligned_mtl", k=4), grads)
    ref_d, ref_w = _authors_aligned(grads)
    assert w is None  # heads keep their own gradient (the authors' scale_decoder_grad=False)
    torch.testing.assert_close(d, ref_d, rtol=1e-4, atol=1e-5)
    _, w = aggregate(make("aligned_mtl", k=4, scale_heads=True), grads)
    torch.testing.assert_close(w, ref_w, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ UPGrad
def _kkt_projection(gram, u):
    """argmin_{v ≥ u} vᵀ G v by enumerating every active set and keeping the one whose
    solution satisfies the KKT conditions (feasible, multipliers G v ≥ 0 on the active set)."""
    k = len(u)
    for size in range(k + 1):
        for active in combinations(range(k), size):
            free = [i for i in range(k) if i not in active]
            v = u.copy()
            if free:
                act = list(active)
                rhs = -gram[np.ix_(free, act)] @ u[act] if act else np.zeros(len(free))
                v[free] = np.linalg.solve(gram[np.ix_(free, free)], rhs)
            mu = gram @ v
            if (v >= u - 1e-12).all() and (mu[list(active)] >= -1e-12).all():
                return v
    raise AssertionError("no KKT point")


@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1)])
def test_upgrad_matches_the_exact_projections_and_lies_in_the_dual_cone(k, seed):
    from mtlbench.methods.upgrad import upgrad_weights

    grads = random_grads(k=k, d=20, seed=seed).double()
    gram = (grads @ grads.T).numpy()
    reg = gram / np.trace(gram) + 1e-4 * np.eye(k)  # torchjd: normalize then regularize
    ref = sum(_kkt_projection(reg, np.eye(k)[i] / k) for i in range(k))
    w = upgrad_weights(gram)
    np.testing.assert_allclose(w, ref, rtol=1e-7, atol=1e-10)
    d = torch.as_tensor(upgrad_weights(gram, reg_eps=0.0)) @ grads   # exact dual cone without regularisation
    assert (grads @ d >= -1e-10 * float(d.norm())).all()
    d_bal, w_bal = aggregate(make("upgrad", k=k), grads.float())
    assert (grads.float() @ d_bal >= -1e-4 * float(d_bal.norm())).all()   # reg_eps 1e-4 bends the cone slightly
    # no conflict: the mean gradient
    pos = grads.abs()
    np.testing.assert_allclose(upgrad_weights((pos @ pos.T).numpy(), reg_eps=0.0), np.full(k, 1 / k), rtol=1e-9)


# ------------------------------------------------------------------ MoCo, MoDo, SDMGrad, ExcessMTL: steps vs the reference
def _steps(name, n=3, k=3, **kw):
    bal = make(name, k=k, **kw)
    out = []
    for s in range(n):
        grads = random_grads(k=k, d=15, seed=10 + s)
        losses = torch.tensor([0.5 + s, 1.0, 2.0 - 0.3 * s])[:k]
        out.append((grads, losses) + tuple(aggregate(bal, grads, losses)))
    return bal, out


def test_moco_steps_match_libmtl():
    bal, steps = _steps("moco")
    y, lambd = torch.zeros(3, 15), torch.ones(3) / 3     # LibMTL MoCo.init_param
    for t, (grads, losses, d, w) in enumerate(steps, 1):
        g = grads.clone()
        for tn in range(3):
            g[tn] = g[tn] / (g[tn].norm() + 1e-8) * losses[tn]
        y = y - (0.5 / t ** 0.5) * (y - g)
        lambd = torch.softmax(lambd - (0.1 / t ** 0.5) * (y @ y.t() + 0 * torch.eye(3)) @ lambd, -1)
        torch.testing.assert_close(d, y.t() @ lambd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bal.lambd.float(), lambd)


def _libmtl_projection2simplex(y):
    m = len(y)
    sorted_y = torch.sort(y, descending=True)[0]
    tmpsum, tmax_f = 0.0, (torch.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return torch.max(y - tmax_f, torch.zeros(m))


def test_modo_steps_match_libmtl_on_one_batch():
    bal, steps = _steps("modo", gamma=0.05)
    lambd = torch.ones(3) / 3
    for grads, _, d, w in steps:   # LibMTL's grads[0], grads[1], grads[2] are all this batch's
        lambd = _libmtl_projection2simplex(lambd - 0.05 * (grads @ (grads.t() @ lambd) + 0.1 * lambd))
        torch.testing.assert_close(d, (lambd[:, None] * grads).sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w, lambd, rtol=1e-5, atol=1e-7)


def _authors_simplex(v, s=1):
    """OptMN-Lab/sdmgrad SDMGrad.euclidean_proj_simplex."""
    v = v.astype(np.float64)
    n, = v.shape
    if v.sum() == s and np.all(v >= 0):
        return v
    u = np.sort(v)[::-1]
    cssv = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, n + 1) > (cssv - s))[0][-1]
    theta = float(cssv[rho] - s) / (rho + 1)
    return (v - theta).clip(min=0)


def test_sdmgrad_steps_match_the_authors():
    bal, steps = _steps("sdmgrad", max_norm=0.0)
    w = torch.ones(3) / 3
    for grads, _, d, _ in steps:
        zeta = grads.t()                       # their [D, T] layout; ξ, ξ', ζ are the one batch
        gg = torch.mm(zeta.t(), zeta)
        scale = torch.mean(torch.sqrt(torch.diag(gg) + 1e-4))
        gg = gg / scale.pow(2)
        gmean = torch.mean(gg, dim=1)
        w.requires_grad = True
        opt = torch.optim.SGD([w], lr=10, momentum=0.5)
        for _ in range(20):
            opt.zero_grad()
            w.grad = torch.mv(gg, w.detach()) + 0.3 * gmean
            opt.step()
            w.data.copy_(torch.from_numpy(_authors_simplex(w.data.numpy())))
        w.requires_grad = False
        g = (torch.sum(zeta * w, dim=1) + 0.3 * torch.mean(zeta, dim=1)) / 1.3 * 3   # × n_tasks
        torch.testing.assert_close(d, g, rtol=1e-4, atol=1e-5)
    clipped = make("sdmgrad")
    d, eff = aggregate(clipped, steps[0][0] * 10)
    assert abs(float(d.norm()) - 1.0) < 1e-5
    torch.testing.assert_close(d, eff @ (steps[0][0] * 10))


def test_excess_mtl_steps_match_the_reference():
    bal, steps = _steps("excess_mtl", n=4, robust_step_size=0.5)
    loss_weight, grad_sum, initial = torch.ones(3), torch.zeros(3, 15), None
    for grads, _, d, w in steps:
        e = torch.zeros(3)
        for i in range(3):
            grad_sum[i] += grads[i] ** 2
            e[i] = grads[i] * (1 / torch.sqrt(grad_sum[i] + 1e-7)) @ grads[i].t()
        if initial is None:
            initial = e
        else:
            loss_weight = loss_weight * torch.exp(e / initial * 0.5)
            loss_weight = loss_weight / loss_weight.sum() * 3
        torch.testing.assert_close(w, loss_weight)
        torch.testing.assert_close(d, loss_weight @ grads)


# ------------------------------------------------------------------ FairGrad
def test_fairgrad_closed_form_on_orthogonal_gradients_and_its_fairness_condition():
    grads = torch.diag(torch.tensor([1.0, 2.0, 0.5])) @ torch.eye(3, 6)
    bal = make("fairgrad", max_norm=0.0)             # alpha 2
    d, w = aggregate(bal, grads)
    a = torch.tensor([1.0, 4.0, 0.25])               # ‖g_i‖²: a_i x_i = x_i^{-1/α} → x_i = a_i^{-α/(1+α)}
    torch.testing.assert_close(w, 3 * a ** (-2 / 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, w @ grads)
    g = random_grads(k=3, d=8, seed=5).double()
    from mtlbench.methods.fairgrad import fairgrad_weights
    x = fairgrad_weights((g @ g.T).numpy(), alpha=1.0)  # α = 1: Nash-MTL's condition
    np.testing.assert_allclose((g @ g.T).numpy() @ x, 1 / x, rtol=1e-5)


# ------------------------------------------------------------------ absent tasks and simplex state
def test_an_absent_task_keeps_its_simplex_weight():
    bal = make("modo", gamma=0.05)
    bal.lambd.copy_(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    grads = random_grads(k=3)[[0, 2]]
    aggregate(bal, grads, idx=torch.tensor([0, 2]))
    assert math.isclose(float(bal.lambd[1]), 0.5) and math.isclose(float(bal.lambd.sum()), 1.0)
