"""Mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-k), the MMoE synthetic data and
the gate statistics hook. Expected numbers are hand computations written next to each test."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.model import count_params
from mtlbench.core.registry import ARCHS, load_all
from mtlbench.methods.dselect_k import regularizer, smooth_step
from mtlbench.results.plots_gates import gate_weights
from mtlbench.tasks import ClassificationTask
from mtlbench.tasks.tabular import BinaryTask

load_all()
MLP = {"name": "mlp", "width": 8, "depth": 2}       # input 6: stem 6->8, two residual 8->8 blocks
TASKS = [BinaryTask("a"), BinaryTask("b")]


def build(arch, tasks=TASKS, backbone=MLP, shape=(6,), **kw):
    torch.manual_seed(0)
    return ARCHS.get(arch)(lambda: build_backbone(backbone, shape), tasks, **kw)


# --------------------------------------------------------------------------- gates
@pytest.mark.parametrize("arch,kw", [("mmoe", {}), ("cgc", {}), ("ple", {}), ("dselect_k", {}),
                                     ("mmoe", {"expert_blocks": "all", "expert_hidden": [4]}),
                                     ("ple", {"layers": 3, "expert_blocks": "all", "expert_hidden": [4, 3]})])
def test_gates_are_distributions_per_task(arch, kw):
    """Every gate's weights are >= 0 and sum to 1 per sample, so the epoch means logged by
    epoch_stats do too (DSelect-k with 4 = 2^2 experts: its selectors cover every code)."""
    model = build(arch, **kw).train()
    model(torch.randn(5, 6))
    stats = model.epoch_stats()["gates"]
    expected = {"mmoe": {"a", "b"}, "cgc": {"a", "b"}, "dselect_k": {"a", "b"},
                "ple": {f"L{j}/{g}" for j in range(1, kw.get("layers", 2) + 1) for g in ("a", "b", "shared")}
                - {f"L{kw.get('layers', 2)}/shared"}}[arch]
    assert set(stats) == expected
    for gate, weights in stats.items():
        w = np.array(list(weights.values()))
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-5, (gate, weights)
    assert model.epoch_stats() is None  # reset after reading; eval forwards add nothing
    model.eval()
    model(torch.randn(5, 6))
    assert model.epoch_stats() is None


def test_parameter_counts_equal_hand_counts():
    """Input 6, two binary tasks (linear heads 4+1 = 5 or 8+1 = 9 parameters)."""
    # experts 3 x (6*4+4) = 84; gates 2 x (6*3+3) = 42; heads 2 x 5
    p = count_params(build("mmoe", num_experts=3, expert_blocks="all", expert_hidden=[4]))
    assert p["parts"] == {"experts": 84, "gates": 42, "head:a": 5, "head:b": 5} and p["total"] == 136
    # trunk: stem 6*8+8 = 56 + block 2*(8*8+8) = 144; experts 3 copies of the last block = 432;
    # gates on the 8 trunk features 2 x (8*3+3) = 54; heads 2 x 9
    p = count_params(build("mmoe", num_experts=3))
    assert p["parts"] == {"trunk": 200, "experts": 432, "gates": 54, "head:a": 9, "head:b": 9}
    assert p["per_task"]["a"] == 200 + 432 + 27 + 9
    # CGC: 2 shared + 1 per task of 28; gates over 3 experts: 2 x 21
    p = count_params(build("cgc", shared_experts=2, task_experts=1, expert_blocks="all", expert_hidden=[4]))
    assert p["total"] == 56 + 2 * 28 + 42 + 10
    # PLE, 2 layers, 1 shared + 1 per task: layer 1 experts 3 x 28, task gates 2 x (6*2+2), shared
    # gate 6*3+3; layer 2 experts read 4 features: 3 x (4*4+4), task gates 2 x (4*2+2)
    p = count_params(build("ple", layers=2, shared_experts=1, task_experts=1, expert_blocks="all",
                           expert_hidden=[4]))
    assert p["parts"]["gates"] == 28 + 21 + 20
    assert p["total"] == 84 + 28 + 21 + 60 + 20 + 10 == 223
    # DSelect-k, 4 experts, k = 2: m = 2 bits; z: Linear(6, 2*2) = 28, w: Linear(6, 2) = 14 per task
    p = count_params(build("dselect_k", num_experts=4, k=2, expert_blocks="all", expert_hidden=[4]))
    assert p["parts"] == {"experts": 112, "gates": 84, "head:a": 5, "head:b": 5}


@pytest.mark.parametrize("backbone,shape,kw", [(MLP, (6,), {"expert_blocks": 1}),
                                               ({"name": "small_cnn", "width": 4}, (3, 8, 8),
                                                {"expert_blocks": 1, "gate_pool": 2})])
def test_ple_with_one_layer_is_cgc_on_the_same_weights(backbone, shape, kw):
    cgc = build("cgc", backbone=backbone, shape=shape, shared_experts=2, task_experts=1, **kw).eval()
    ple = build("ple", backbone=backbone, shape=shape, layers=1, shared_experts=2, task_experts=1, **kw).eval()
    ple.load_state_dict({k.replace("layer.", "layers.0.", 1): v for k, v in cgc.state_dict().items()})
    x = torch.randn(4, *shape)
    for t, y in cgc(x).items():
        torch.testing.assert_close(ple(x)[t], y, rtol=0, atol=0)


# --------------------------------------------------------------------------- DSelect-k
def test_smooth_step_values():
    """S(t) = -2t^3/γ^3 + 3t/(2γ) + 1/2 inside (-γ/2, γ/2), 0 / 1 outside: at γ = 1,
    S(1/4) = -2/64 + 3/8 + 1/2 = 0.84375; the same at t = 0.5, γ = 2 (S depends on t/γ)."""
    t = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    torch.testing.assert_close(smooth_step(t), torch.tensor([0.0, 0.0, 0.5, 0.84375, 1.0, 1.0]))
    torch.testing.assert_close(smooth_step(torch.tensor([0.5]), gamma=2.0), torch.tensor([0.84375]))


def test_dselect_k_selects_at_most_k_experts_once_saturated():
    """8 experts (3 bits), k = 2. Logits = biases of magnitude γ (saturated): selector 0 has
    bits (1, 0, 1) -> expert 5, selector 1 bits (0, 0, 1) -> expert 1; softmax(w) = (1/4, 3/4)."""
    model = build("dselect_k", num_experts=8, k=2, gamma=1.0, expert_blocks="all", expert_hidden=[4])
    gate = model.gates["a"]
    with torch.no_grad():
        gate.z.weight.zero_()
        gate.z.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0]))
        gate.w.weight.zero_()
        gate.w.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    q = gate(torch.randn(5, 6))
    expected = torch.zeros(8)
    expected[5], expected[1] = 0.25, 0.75
    torch.testing.assert_close(q, expected.expand(5, 8))
    assert int((q[0] > 0).sum()) <= 2


def test_dselect_k_entropy_regulariser_matches_hand_computation():
    """3 experts (2 bits, codes 00, 01, 10; 11 unreachable), k = 1, task routing, z logits 0 ->
    z = (1/2, 1/2): each reachable expert gets r = 1/4 (sum 3/4). With entropy weight 0.1:
    R = 0.1 · 3 · (-1/4 · ln(1/4 + 1e-6)) + 1 / (3/4) = 0.10397178 + 1.33333333 = 1.43730511."""
    model = build("dselect_k", num_experts=3, k=1, routing="task", entropy_weight=0.1, expert_blocks="all",
                  expert_hidden=[4]).train()
    gate = model.gates["a"]
    with torch.no_grad():
        gate.z_logits.zero_()
    r, w = gate.selectors(torch.randn(2, 6))
    torch.testing.assert_close(r, torch.full((1, 1, 3), 0.25))
    assert abs(regularizer(r, 0.1, power_of_2=False).item() - 1.43730511) < 1e-6
    # the training forward adds exactly ∂R/∂ℓ to the task loss's gradient of the gate logits
    x = torch.randn(3, 6)
    model.zero_grad()
    model(x)["a"].sum().backward()
    got = gate.z_logits.grad.clone()
    model.eval()
    model.zero_grad()
    r, _ = gate.selectors(x)
    (model(x)["a"].sum() + regularizer(r, 0.1, power_of_2=False)).backward()
    torch.testing.assert_close(got, gate.z_logits.grad)


# --------------------------------------------------------------------------- synthetic data
@pytest.mark.parametrize("p", [1.0, 0.9, 0.5, 0.0, -0.3])
def test_synthetic_task_weights_have_the_requested_cosine(p):
    from mtlbench.datasets.mmoe_synthetic import build as build_synthetic, task_weights

    w1, w2 = task_weights(100, p, 2.0, np.random.default_rng(3))
    assert abs(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)) - p) < 1e-12
    assert abs(np.linalg.norm(w1) - 2.0) < 1e-12 and abs(np.linalg.norm(w2) - 2.0) < 1e-12
    info = build_synthetic(split_seed=1, correlation=p, n_train=50, n_val=5, n_test=5).info
    assert abs(info["cosine"] - p) < 1e-6


def test_synthetic_labels_follow_the_paper_formula():
    """w = (1, 0), x = (0.5, 2), α = (1, 2), β = (0, 1), no noise:
    y = 0.5 + sin(0.5) + sin(2·0.5 + 1) = 0.5 + 0.47942554 + 0.90929743 = 1.88872297."""
    from mtlbench.datasets.mmoe_synthetic import labels

    y = labels(np.array([[0.5, 2.0]]), np.array([1.0, 0.0]), [1.0, 2.0], [0.0, 1.0], 0.0, np.random.default_rng(0))
    assert abs(y[0] - 1.88872297) < 1e-8


# --------------------------------------------------------------------------- the hook and the plot
def test_gate_statistics_are_logged_per_epoch_and_plotted(run_cli, results_dir, tmp_path):
    assert run_cli("dataset=mmoe_synthetic", "arch=cgc", "trainer.epochs=2", "dataset.dim=8", "dataset.n_train=64",
                   "dataset.n_val=16", "dataset.n_test=16", "backbone.width=8") == 0
    run = next((results_dir / "mmoe_synthetic" / "cgc+equal").iterdir())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        gates = r["arch"]["gates"]
        assert set(gates) == {"y1", "y2"} and set(gates["y1"]) == {"s0", "s1", "y10"}
        assert all(abs(sum(g.values()) - 1) < 1e-5 for g in gates.values())

    class A:  # the part of a report's Analysis the plot reads
        class runset:
            dataset = "mmoe_synthetic"
            runs = pd.DataFrame({"method": ["cgc+equal"], "path": [str(run)]})
    paths = gate_weights(A, tmp_path)
    assert [p.name for p in paths] == ["gate_weights.png", "gate_weights.pdf"] and all(p.is_file() for p in paths)


@pytest.mark.parametrize("arch,balancer", [("mmoe", "uw"), ("dselect_k", "mgda")])
def test_moe_archs_compose_with_loss_and_gradient_balancers(arch, balancer, run_cli, results_dir):
    """A loss balancer (learned weights) and a gradient balancer (one backward per task through
    the gates: DSelect-k's regulariser gradient is added on each) train to finite losses."""
    assert run_cli("dataset=mmoe_synthetic", f"arch={arch}", f"balancer={balancer}", "trainer.epochs=1",
                   "dataset.dim=8", "dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16",
                   "backbone.width=8") == 0
    run = next((results_dir / "mmoe_synthetic" / f"{arch}+{balancer}").iterdir())
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for v in row["train_loss"].values()) and set(row["arch"]["gates"]) == {"y1", "y2"}
