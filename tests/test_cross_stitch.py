"""Cross-stitch networks (methods/cross_stitch.py): identity units = independent networks,
units learn (non-zero gradients, cross-task gradient flow), parameter counts, every
backbone family (residual CNN / MLP / dilated ResNet / SegNet with per-column pooling
state), and per-task forwards."""
from __future__ import annotations

import pytest
import torch
import yaml

from mtlbench.backbones.base import build_backbone, mlp, small_cnn
from mtlbench.tasks.dense import DepthTask, SegmentationTask
from mtlbench.core.model import count_params
from mtlbench.core.registry import ARCHS
from mtlbench.backbones.resnet import small_resnet
from mtlbench.backbones.segnet import segnet
from mtlbench.results.store import iter_runs
from mtlbench.tasks import ClassificationTask

CrossStitch = ARCHS.get("cross_stitch")
Independent = ARCHS.get("independent")

CLS = [ClassificationTask("left", 10), ClassificationTask("right", 10)]
DENSE = [SegmentationTask("seg", 3), DepthTask("depth")]

# name -> (backbone factory, input shape, tasks); tiny widths for CPU speed
BACKBONES = {
    "small_cnn": (lambda: small_cnn((1, 16, 16), width=4), (1, 16, 16), CLS),
    "mlp": (lambda: mlp((16,), width=8, depth=2), (16,), CLS),
    "small_resnet": (lambda: small_resnet((3, 32, 32), width=4), (3, 32, 32), DENSE),
    "segnet": (lambda: segnet((3, 32, 32), width=2), (3, 32, 32), DENSE),
}


def n(params) -> int:
    return sum(p.numel() for p in params)


def build(name, arch=CrossStitch, seed=0, **kw):
    fn, shape, tasks = BACKBONES[name]
    torch.manual_seed(seed)
    return arch(fn, tasks, **kw), shape, tasks


def test_init_and_options():
    model, _, _ = build("small_cnn", self_weight=0.8)
    a = model.units[0].alpha
    assert a.shape == (2, 2, 4)
    assert torch.allclose(a[0, 0], torch.full((4,), 0.8)) and torch.allclose(a[0, 1], torch.full((4,), 0.2))
    three = [ClassificationTask(t, 3) for t in "abc"]
    m3 = CrossStitch(lambda: mlp((4,), width=5, depth=1), three, unit="task")
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    assert torch.allclose(m3.units[0].alpha.detach(), expected)
    m3b = CrossStitch(lambda: mlp((4,), width=5, depth=1), three, unit="task", other_weight=0.3)
    assert torch.allclose(m3b.units[0].alpha.detach().sum(1), torch.full((3,), 1.5))
    single = CrossStitch(lambda: mlp((4,), width=5, depth=1), three[:1])
    assert torch.equal(single.units[0].alpha.detach(), torch.ones(1, 1, 5))
    with pytest.raises(ValueError, match="unit must be one of"):
        CrossStitch(lambda: mlp((4,), width=5, depth=1), three, unit="pixel")


@pytest.mark.parametrize("backbone", ["small_cnn", "segnet"])
@pytest.mark.parametrize("unit", ["channel", "task"])
def test_identity_units_equal_independent_networks(backbone, unit):
    ind, shape, tasks = build(backbone, Independent, seed=1)
    cs, _, _ = build(backbone, seed=2, unit=unit, self_weight=1.0, other_weight=0.0, stem_unit=True)
    missing, unexpected = cs.load_state_dict(ind.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("units.", "stem_unit.")) for k in missing) and missing
    x = torch.randn(3, *shape)
    for train in (False, True):  # eval: running BN stats; train: batch stats (per column)
        ind.train(train), cs.train(train)
        out_i, out_c = ind(x), cs(x)
        assert set(out_c) == {t.name for t in tasks}
        for t in out_i:
            assert torch.equal(out_i[t], out_c[t]), (backbone, unit, t, train)


@pytest.mark.parametrize("unit", ["channel", "task"])
def test_units_get_gradients_and_tasks_exchange_information(unit):
    model, shape, tasks = build("small_cnn", unit=unit, self_weight=0.9, stem_unit=True)
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    pred = model.forward_tasks(x, ["left"])
    assert list(pred) == ["left"]
    tasks[0].loss(pred["left"], y).backward()
    for u in model.unit_modules():
        assert u.alpha.grad is not None and u.alpha.grad.abs().sum() > 0
    # the left loss reaches the RIGHT column through the units (and the right head not at all)
    assert all(p.grad is not None for p in model.backbones["right"].parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.backbones["right"].parameters())
    assert all(p.grad is None for p in model.heads["right"].parameters())
    # the identity init passes nothing across columns: the right column gets no gradient
    ident, _, _ = build("small_cnn", unit=unit, self_weight=1.0, other_weight=0.0)
    tasks[0].loss(ident.forward_tasks(x, ["left"])["left"], y).backward()
    assert all(p.grad is None or not p.grad.any() for p in ident.backbones["right"].parameters())
    assert ident.units[-1].alpha.grad.abs().sum() > 0  # alpha_{left,right} still learns


def hand_count(model, unit: str, stem_unit: bool = False) -> int:
    cols = list(model.backbones.values())
    T = len(cols)
    backbone = n(cols[0].parameters())
    heads = n(model.heads.parameters())
    points = [b.out_channels for b in cols[0].blocks] + ([cols[0].blocks[0].in_channels] if stem_unit else [])
    units = sum(T * T * c for c in points) if unit == "channel" else T * T * len(points)
    return T * backbone + heads + units


@pytest.mark.parametrize("unit,stem_unit", [("channel", False), ("channel", True), ("task", False)])
def test_param_count(unit, stem_unit):
    model, shape, _ = build("small_cnn", unit=unit, stem_unit=stem_unit)
    counts = count_params(model)
    assert counts["total"] == hand_count(model, unit, stem_unit) == n(model.parameters())
    head = n(model.heads["left"].parameters())
    # a deployment of one task needs every column and every unit, plus its own head
    assert counts["per_task"]["left"] == counts["total"] - n(model.heads["right"].parameters())
    assert counts["per_task"]["left"] == n(model.shared_parameters()) + head
    assert model(torch.randn(2, *shape), representation=True)[1] is None  # no single shared tensor
    assert model.last_shared_parameters() == [model.units[-1].alpha]


def test_cli_run_records_param_count(run_cli, results_dir):
    assert run_cli("arch=cross_stitch") == 0
    (folder, rec), = list(iter_runs(results_dir))
    assert rec["status"] == "completed" and rec["arch"] == "cross_stitch"
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    arch_kw = {k: v for k, v in cfg["arch"].items() if k != "name"}
    model = CrossStitch(lambda: build_backbone(cfg["backbone"], (1, 36, 36)), CLS, **arch_kw)
    assert rec["params"]["total"] == count_params(model)["total"] == hand_count(model, cfg["arch"]["unit"])
    assert rec["params"]["per_task"] == count_params(model)["per_task"]


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("unit", ["channel", "task"])
def test_backbones_forward_shapes(backbone, unit):
    model, shape, tasks = build(backbone, unit=unit, stem_unit=True)
    x = torch.randn(2, *shape)
    out = model(x)
    assert list(out) == [t.name for t in tasks]
    if tasks is CLS:
        assert all(o.shape == (2, 10) for o in out.values())
    else:
        size = (32, 32) if backbone == "segnet" else (4, 4)  # segnet: input resolution; resnet: os 8
        assert out["seg"].shape == (2, 3, *size) and out["depth"].shape == (2, 1, *size)
    sum(o.float().mean() for o in out.values()).backward()
    assert all(u.alpha.grad is not None for u in model.unit_modules())


@pytest.mark.parametrize("backbone", ["mlp", "segnet"])
def test_forward_tasks_returns_only_requested_tasks(backbone):
    model, shape, tasks = build(backbone)
    model.eval()
    x = torch.randn(2, *shape)
    names = [t.name for t in tasks]
    with torch.no_grad():
        full = model(x)
        for chosen in ([names[1]], [names[0]], names[::-1], []):
            out = model.forward_tasks(x, chosen)
            assert list(out) == chosen
            for t in chosen:
                assert torch.allclose(out[t], full[t], atol=1e-6)
