"""DWA, uncertainty weighting and MGDA-UB against hand-computed values, plus one tiny
CLI run per preset checking what they log."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtlbench.core.balancer import BalancerContext
from mtlbench.core.model import MTLModel
from mtlbench.core.registry import BALANCERS
from mtlbench.results.store import iter_runs
from mtlbench.core.tasks import masked_mean

from mtlbench.methods.mgda import min_norm_pair, min_norm_weights

DWA, UW, MGDA = BALANCERS.get("dwa"), BALANCERS.get("uw"), BALANCERS.get("mgda")


# ----------------------------------------------------------------------------- DWA
def test_dwa_weights_from_loss_history():
    b = DWA(["a", "b"])  # T = 2
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(5.0)}
    assert b.weights() == {"a": 1.0, "b": 1.0}
    # epoch 1 and 2 are trained with λ = 1
    assert b.epoch_end({"a": 1.0, "b": 1.0})["next_weights"] == {"a": 1.0, "b": 1.0}
    assert b.weights() == {"a": 1.0, "b": 1.0}
    assert float(b.combine(losses)) == pytest.approx(8.0)
    state = b.epoch_end({"a": 0.5, "b": 1.0})  # w = (0.5/1, 1/1)
    assert b.weights() == {"a": 1.0, "b": 1.0}  # λ used during epoch 2
    den = math.exp(0.5 / 2) + math.exp(1.0 / 2)
    lam = {"a": 2 * math.exp(0.25) / den, "b": 2 * math.exp(0.5) / den}
    assert state["next_weights"] == pytest.approx(lam, rel=1e-6)
    assert float(b.combine(losses)) == pytest.approx(3 * lam["a"] + 5 * lam["b"], rel=1e-6)
    # epoch 3 ends: its logged weights are the λ it used; the next ones use epochs 2 and 3
    state = b.epoch_end({"a": 0.25, "b": 2.0})  # w = (0.5, 2.0)
    assert b.weights() == pytest.approx(lam, rel=1e-6)
    den = math.exp(0.25) + math.exp(1.0)
    assert state["next_weights"] == pytest.approx({"a": 2 * math.exp(0.25) / den, "b": 2 * math.exp(1.0) / den},
                                                  rel=1e-6)
    assert sum(state["next_weights"].values()) == pytest.approx(2.0)


def test_dwa_history_is_in_state_dict_and_temperature_applies():
    b = DWA(["a", "b", "c"], temperature=1.0)
    for ep in ({"a": 1.0, "b": 2.0, "c": 0.0}, {"a": 2.0, "b": 1.0, "c": 0.0}):
        state = b.epoch_end(ep)
    # c had a zero average loss (unlabelled): its ratio counts as 1
    e = [math.exp(2.0), math.exp(0.5), math.exp(1.0)]
    assert state["next_weights"] == pytest.approx({t: 3 * v / sum(e) for t, v in zip("abc", e)}, rel=1e-6)
    fresh = DWA(["a", "b", "c"], temperature=1.0)
    fresh.load_state_dict(b.state_dict())
    assert torch.equal(fresh.lambdas, b.lambdas) and int(fresh.epochs_seen) == 2
    nxt = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert fresh.epoch_end(nxt) == b.epoch_end(nxt)
    with pytest.raises(ValueError, match="temperature"):
        DWA(["a"], temperature=0)


# ----------------------------------------------------------------------------- UW
@pytest.mark.parametrize("form,c", [("regression", 0.5), ("classification", 1.0)])
def test_uw_loss_and_gradients(form, c):
    b = UW(["a", "b"], form=form)
    s = [0.3, -0.2]
    with torch.no_grad():
        b.log_var.copy_(torch.tensor(s))
    la = torch.tensor(2.0, requires_grad=True)
    lb = torch.tensor(3.0, requires_grad=True)
    total = b.combine({"a": la, "b": lb})
    assert float(total.detach()) == pytest.approx(c * math.exp(-0.3) * 2 + 0.15 + c * math.exp(0.2) * 3 - 0.1, rel=1e-6)
    total.backward()
    assert b.log_var.grad.tolist() == pytest.approx([-c * math.exp(-0.3) * 2 + 0.5, -c * math.exp(0.2) * 3 + 0.5],
                                                    rel=1e-6)
    assert (float(la.grad), float(lb.grad)) == pytest.approx((c * math.exp(-0.3), c * math.exp(0.2)), rel=1e-6)
    assert b.weights() == pytest.approx({"a": c * math.exp(-0.3), "b": c * math.exp(0.2)}, rel=1e-6)
    assert b.epoch_end({"a": 1.0, "b": 1.0}) == {"sigma": pytest.approx({"a": math.exp(0.15), "b": math.exp(-0.1)})}


def test_uw_absent_task_keeps_regulariser_and_is_learnable():
    b = UW(["a", "b"])
    assert [p is b.log_var for p in b.parameters()] == [True]
    b.combine({"a": torch.tensor(0.0), "b": torch.tensor(1.0)}).backward()
    assert b.log_var.grad.tolist() == pytest.approx([0.5, 0.0])  # only ½·s_a acts on task a
    with pytest.raises(ValueError, match="form"):
        UW(["a"], form="gaussian")


# ----------------------------------------------------------------------------- MGDA solver
def gram_of(*vecs):
    g = np.array(vecs, dtype=np.float64)
    return g @ g.T


def test_min_norm_hand_cases():
    alpha, cost = min_norm_weights(gram_of([1, 0], [0, 1]))
    assert alpha == pytest.approx([0.5, 0.5]) and cost == pytest.approx(0.5)
    # g1 = (1,0), g2 = (0,2): c* = (d − b)/(a + d − 2b) = 4/5, point (0.8, 0.4)
    alpha, cost = min_norm_weights(gram_of([1, 0], [0, 2]))
    assert alpha == pytest.approx([0.8, 0.2]) and cost == pytest.approx(0.8)
    # ⟨g1, g2⟩ ≥ ‖g1‖²: g1 itself is the min-norm point
    alpha, cost = min_norm_weights(gram_of([1, 0], [2, 1]))
    assert alpha == pytest.approx([1.0, 0.0]) and cost == pytest.approx(1.0)
    # opposite gradients: Pareto-stationary, norm 0
    alpha, cost = min_norm_weights(gram_of([1, 1], [-2, -2]))
    assert alpha == pytest.approx([2 / 3, 1 / 3]) and cost == pytest.approx(0.0, abs=1e-12)
    assert min_norm_pair(1.0, 1.0, 1.0)[1] == pytest.approx(1.0)  # identical vectors
    # three orthonormal gradients: the centre
    alpha, cost = min_norm_weights(np.eye(3))
    assert alpha == pytest.approx([1 / 3] * 3, abs=1e-6) and cost == pytest.approx(1 / 3, abs=1e-9)
    # a dominated third gradient (a long copy of g1) gets no weight
    alpha, _ = min_norm_weights(gram_of([1, 0], [0, 1], [3, 0]))
    assert alpha == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)
    assert min_norm_weights(np.array([[4.0]]))[0].tolist() == [1.0]


def simplex_grid(k, n):
    for c in itertools.product(range(n + 1), repeat=k - 1):
        if sum(c) <= n:
            yield np.array([*c, n - sum(c)]) / n


@pytest.mark.parametrize("k", [2, 3])
def test_min_norm_beats_brute_force_grid(k):
    rng = np.random.default_rng(k)
    for trial in range(20):
        g = rng.normal(size=(k, 4)) + (rng.normal(size=4) if trial % 2 else 0.0)  # some with a common direction
        gram = g @ g.T
        alpha, cost = min_norm_weights(gram)
        assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0)
        assert cost == pytest.approx(float(np.sum((alpha @ g) ** 2)), rel=1e-9, abs=1e-12)
        grid = min(float(a @ gram @ a) for a in simplex_grid(k, 200 if k == 2 else 60))
        assert cost <= grid + 1e-12
        assert cost >= grid - 0.05 * max(grid, 1e-3)


def test_min_norm_kkt_many_tasks():
    rng = np.random.default_rng(0)
    for _ in range(10):
        g = rng.normal(size=(6, 5)) + 0.5
        gram = g @ g.T
        alpha, cost = min_norm_weights(gram, max_iter=2000)
        grad = gram @ alpha  # optimality: (Gα)_i ≥ αᵀGα, with equality on the support
        assert grad.min() >= cost - 1e-6 * gram.diagonal().max()
        assert np.all(np.abs(grad[alpha > 1e-6] - cost) <= 1e-6 * gram.diagonal().max())


# ----------------------------------------------------------------------------- MGDA backward
class Toy(MTLModel):
    """Shared linear trunk (representation z) + one linear head per task."""

    def __init__(self, tasks=("a", "b"), expose_rep=True, shared=True):
        nn.Module.__init__(self)
        self.task_names = list(tasks)
        self.expose_rep, self.shared = expose_rep, shared
        self.trunk = nn.Linear(3, 4) if shared else nn.ModuleDict({t: nn.Linear(3, 4) for t in tasks})
        self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in tasks})

    def forward_representation(self, x, tasks):
        if not self.shared:
            return {t: self.heads[t](self.trunk[t](x)).squeeze(1) for t in tasks}, None
        z = self.trunk(x)
        return {t: self.heads[t](z).squeeze(1) for t in tasks}, (z if self.expose_rep else None)

    def shared_parameters(self):
        return list(self.trunk.parameters()) if self.shared else []

    def task_parameters(self, task):
        return self.shared_parameters() + list(self.heads[task].parameters())


def toy_losses(model, x, y, masks=None):
    """(losses, a balancer context whose representation is this forward's)."""
    preds, rep = model(x, representation=True)
    ctx = BalancerContext(model.task_names, shared=model.shared_parameters(), representation=rep)
    return {t: masked_mean((preds[t] - y[t]) ** 2, None if masks is None else masks[t]) for t in preds}, ctx


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("expose_rep,mode", [(True, "representation"), (False, "parameters")])
def test_mgda_backward_is_the_alpha_weighted_gradient(expose_rep, mode):
    torch.manual_seed(0)
    model, b = Toy(expose_rep=expose_rep), MGDA(["a", "b"])
    x, y = torch.randn(8, 3), {"a": torch.randn(8), "b": torch.randn(8)}
    losses, ctx = toy_losses(model, x, y)
    # the per-task gradients the solver should see, computed independently
    ref = [ctx.representation] if expose_rep else model.shared_parameters()
    g = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(losses[n], ref, retain_graph=True)]) for n in "ab"]
    gram = torch.stack(g) @ torch.stack(g).T
    expected, _ = min_norm_weights(gram.double().numpy())
    total = b.backward(losses, ctx)
    assert not total.requires_grad
    got = grads_of(model)
    model.zero_grad()
    losses, _ = toy_losses(model, x, y)
    (expected[0] * losses["a"] + expected[1] * losses["b"]).backward()
    for p, q in zip(got, grads_of(model)):
        torch.testing.assert_close(p, q)
    assert b.weights() == pytest.approx(dict(zip("ab", expected)), rel=1e-5)
    assert b.epoch_end({})["mode"] == mode


def test_mgda_absent_task_and_fallbacks():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), {t: torch.randn(8) for t in "abc"}
    masks = {"a": torch.ones(8, dtype=torch.bool), "b": torch.zeros(8, dtype=torch.bool),
             "c": torch.ones(8, dtype=torch.bool)}
    model, b = Toy("abc"), MGDA(["a", "b", "c"], normalization="loss+")
    for _ in range(2):
        model.zero_grad()
        losses, ctx = toy_losses(model, x, y, masks)
        assert float(losses["b"].detach()) == 0.0
        b.backward(losses, ctx)
    state = b.epoch_end({})
    w = b.weights()
    assert w["b"] == 0.0 and w["a"] + w["c"] == pytest.approx(1.0)
    assert state["excluded"] == {"a": 0, "b": 2, "c": 0} and state["steps"] == 2
    # independent networks: no shared tensor at all -> equal weights 1/K
    model, b = Toy(shared=False), MGDA(["a", "b"])
    b.backward(*toy_losses(model, x, y))
    assert b.epoch_end({})["mode"] == "equal" and b.weights() == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="normalization"):
        MGDA(["a"], normalization="max")


def test_mgda_normalization_and_autocast():
    class Rep(MTLModel):  # L_a = z·(1,0), L_b = z·(0,2): gradients (1,0) and (0,2) w.r.t. z
        def __init__(self):
            super().__init__([])
            self.z = nn.Parameter(torch.ones(2))

        def shared_parameters(self):
            return [self.z]

    model = Rep()
    for norm, alpha in (("none", [0.8, 0.2]), ("l2", [0.5, 0.5])):
        b = MGDA(["a", "b"], normalization=norm)
        z = model.z * 1.0
        b.backward({"a": z[0], "b": 2 * z[1]}, BalancerContext(["a", "b"], shared=[model.z], representation=z))
        assert list(b.weights().values()) == pytest.approx(alpha)
    # bfloat16 autocast on the CPU: the solver still sees float32 gradients
    torch.manual_seed(0)
    toy, b = Toy(), MGDA(["a", "b"])
    x, y = torch.randn(8, 3), {"a": torch.randn(8), "b": torch.randn(8)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, ctx = toy_losses(toy, x, y)
        assert ctx.representation.dtype == torch.bfloat16
        total = b.backward(losses, ctx)
    assert math.isfinite(float(total)) and sum(b.weights().values()) == pytest.approx(1.0, abs=1e-6)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in toy.parameters())


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("preset,balancer", [("dwa", "dwa"), ("uncertainty", "uw"), ("mgda", "mgda")])
def test_preset_logs_weights_every_epoch(preset, balancer, run_cli, results_dir):
    assert run_cli(f"method={preset}", "trainer.epochs=3") == 0
    (folder, rec), = list(iter_runs(results_dir))
    assert (rec["method"], rec["arch"], rec["balancer"]) == (preset, "hard_sharing", balancer)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    tasks = set(rec["tasks"])
    for r in rows:
        assert set(r["balancer_weights"]) == tasks
        assert all(math.isfinite(v) for v in r["balancer_weights"].values())
    if balancer == "dwa":
        assert all(v == 1.0 for r in rows[:2] for v in r["balancer_weights"].values())
        assert sum(rows[2]["balancer_weights"].values()) == pytest.approx(len(tasks), rel=1e-5)
    if balancer == "uw":
        assert all(set(r["balancer"]["sigma"]) == tasks for r in rows)
    if balancer == "mgda":
        assert all(r["balancer"]["mode"] == "representation" for r in rows)
        assert all(sum(r["balancer_weights"].values()) == pytest.approx(1.0, abs=1e-5) for r in rows)
