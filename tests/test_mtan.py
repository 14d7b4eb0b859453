"""MTAN (methods/mtan.py): stage layout, per-task attention masks, gradients, parameter count,
per-task forward, and an end-to-end CLI run."""
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import mtlbench
from mtlbench.backbones.base import Backbone, Block, build_backbone
from mtlbench.tasks.dense import DepthTask, NormalTask, SegmentationTask
from mtlbench.core.model import count_params
from mtlbench.core.registry import ARCHS
from mtlbench.results.store import iter_runs
from mtlbench.tasks import ClassificationTask

MTAN = ARCHS.get("mtan")
CONF = Path(mtlbench.__file__).parent / "conf"


def cls_tasks():
    return [ClassificationTask("a", 10), ClassificationTask("b", 5)]


def dense_tasks():
    return [SegmentationTask("seg", num_classes=4), DepthTask("depth"), NormalTask("normal")]


def build(cfg, shape, tasks, **kw):
    torch.manual_seed(0)
    return MTAN(lambda: build_backbone(cfg, shape), tasks, **kw)


# (backbone config, input shape, tasks factory, expected stage block groups)
CASES = {
    "small_cnn": ({"name": "small_cnn", "width": 4}, (1, 36, 36), cls_tasks, [[0], [1], [2]]),
    "small_resnet": ({"name": "small_resnet", "width": 8}, (3, 32, 32), dense_tasks, [[0], [1], [2], [3]]),
    "segnet": ({"name": "segnet", "width": 8}, (3, 32, 32), dense_tasks, [[i] for i in range(10)]),
    "resnet18_os32": ({"name": "resnet18", "width": 4, "output_stride": 32, "head": "conv"}, (3, 32, 32),
                      dense_tasks, [[0, 1], [2, 3], [4, 5], [6, 7]]),
    "mlp": ({"name": "mlp", "width": 8, "depth": 2}, (6,), cls_tasks, [[0, 1]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_shapes_masks_and_gradients(case):
    cfg, shape, tasks_fn, groups = CASES[case]
    model = build(cfg, shape, tasks_fn())
    assert model.stages == groups
    x = torch.randn(2, *shape)
    model.eval()  # the shared pass must reproduce the backbone's own forward exactly
    with torch.no_grad():
        taps = model.shared_features(x)
        assert torch.allclose(taps[-1][1], model.backbone(x), atol=1e-6)
        expected = {t: model.heads[t](model.backbone(x)).shape for t in model.task_names}
    model.train()
    preds, masks = model.forward_tasks(x, model.task_names, return_masks=True)
    assert {t: p.shape for t, p in preds.items()} == expected
    for t in model.task_names:
        assert len(masks[t]) == len(groups)
        for a, (_, f) in zip(masks[t], taps):
            assert a.shape == f.shape
            assert bool(((a > 0) & (a < 1)).all())
    first, other = model.task_names[0], model.task_names[1]
    task = tasks_fn()[0]
    dense = isinstance(task, SegmentationTask)
    target = torch.randint(0, task.num_classes, (2,) + (tuple(preds[first].shape[2:]) if dense else ()))
    task.loss(preds[first], target).backward()
    for name, p in model.attention[first].named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for p in list(model.attention[other].parameters()) + list(model.heads[other].parameters()):
        assert p.grad is None or not p.grad.any()
    for p in model.shared_parameters():  # backbone and shared projections both learn
        assert p.grad is not None
    assert sum(float(p.grad.abs().sum()) for p in model.projections.parameters()) > 0 or len(groups) == 1


def test_forward_tasks_runs_only_the_requested_branch():
    cfg, shape, tasks_fn, _ = CASES["small_resnet"]
    model = build(cfg, shape, tasks_fn()).eval()
    calls = []
    for t in model.task_names:
        for m in list(model.attention[t]) + [model.heads[t]]:
            m.register_forward_hook(lambda mod, inp, out, t=t: calls.append(t))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        full = model(x)
        calls.clear()
        one = model.forward_tasks(x, ["depth"])
    assert set(one) == {"depth"} and set(calls) == {"depth"}
    assert len(calls) == len(model.stages) + 1
    assert torch.allclose(one["depth"], full["depth"])


def _conv_bn(c_in, c_out, k, bias):
    return c_in * c_out * k * k + (c_out if bias else 0) + 2 * c_out


def test_parameter_count_by_hand():
    w, classes = 4, {"a": 10, "b": 5}
    cfg, shape = {"name": "small_cnn", "width": w, "depths": [1, 1, 1]}, (1, 36, 36)
    backbone = build_backbone(cfg, shape)
    n_backbone = sum(p.numel() for p in backbone.parameters())
    # small_cnn by hand: 3x3 stem conv + BN, basic blocks 4->4, 4->8 (s2), 8->16 (s2)
    assert n_backbone == (_conv_bn(1, 4, 3, False)
                          + _conv_bn(4, 4, 3, False) + _conv_bn(4, 4, 3, False)
                          + _conv_bn(4, 8, 3, False) + _conv_bn(8, 8, 3, False) + _conv_bn(4, 8, 1, False)
                          + _conv_bn(8, 16, 3, False) + _conv_bn(16, 16, 3, False) + _conv_bn(8, 16, 1, False))
    widths = [w, 2 * w, 4 * w]  # one stage per block; u (first conv) and f both have the block width
    # mask g: 1x1 conv (bias) + BN -> hidden c, 1x1 conv (bias) + BN -> c; input c, then 2c
    per_task_masks = sum(_conv_bn(c if s == 0 else 2 * c, c, 1, True) + _conv_bn(c, c, 1, True)
                         for s, c in enumerate(widths))
    # projections: stride-1 BasicBlock c_prev -> c with a 1x1 projection shortcut (widths differ)
    projections = sum(_conv_bn(a, b, 3, False) + _conv_bn(b, b, 3, False) + _conv_bn(a, b, 1, False)
                      for a, b in zip(widths, widths[1:]))
    heads = {t: 4 * w * k + k for t, k in classes.items()}  # GAP + linear
    tasks = [ClassificationTask(t, k) for t, k in classes.items()]

    model = build(cfg, shape, tasks)
    counts = count_params(model)
    assert counts["total"] == n_backbone + projections + 2 * per_task_masks + sum(heads.values())
    assert counts["per_task"] == {t: n_backbone + projections + per_task_masks + heads[t] for t in classes}
    assert sum(p.numel() for p in model.shared_parameters()) == n_backbone + projections

    separate = build(cfg, shape, tasks, share_projections=False)
    assert count_params(separate)["total"] == counts["total"] + projections
    assert sum(p.numel() for p in separate.shared_parameters()) == n_backbone


def test_cli_run_records_the_models_parameter_count(run_cli, results_dir):
    assert run_cli("arch=mtan", "balancer=equal") == 0
    (_, rec), = list(iter_runs(results_dir))
    assert rec["status"] == "completed" and rec["arch"] == "mtan"
    cfg = yaml.safe_load((CONF / "backbone" / "small_cnn.yaml").read_text())
    arch = yaml.safe_load((CONF / "arch" / "mtan.yaml").read_text())
    arch.pop("name")
    model = MTAN(lambda: build_backbone(cfg, (1, 36, 36)),
                 [ClassificationTask("left", 10), ClassificationTask("right", 10)], **arch)
    assert rec["params"]["total"] == count_params(model)["total"]
    assert rec["params"]["per_task"] == count_params(model)["per_task"]


def test_stage_rules_and_unsupported_backbones():
    cfg, shape, tasks_fn, _ = CASES["mlp"]
    per_block = build(cfg, shape, tasks_fn(), stages="block")
    assert per_block.stages == [[0], [1]] and per_block.stage_kinds == ["mlp", "mlp"]
    assert set(per_block(torch.randn(3, *shape))) == {"a", "b"}
    with pytest.raises(ValueError, match="stages must be one of"):
        build(cfg, shape, tasks_fn(), stages="layers")

    class Odd(Block):
        def forward(self, x, state=None):
            return x

    def odd_backbone():
        return Backbone(nn.Identity(), [Odd(4, 4)], name="odd")

    with pytest.raises(ValueError, match="cannot attend over a single Odd stage"):
        MTAN(odd_backbone, cls_tasks())


def test_segnet_mtan_matches_the_official_nyuv2_model():
    """lorenmt/mtan im2im_pred/model_segnet_mtan.py, 3 tasks (13 classes, depth, normal), counted
    by building its SegNet class (count_parameters): 44,229,076 parameters, 3 of them the
    uncertainty weights ``logsigma`` (here the uw balancer's); model_segnet_single.py
    (semantic): 24,981,069; the MTAN paper's table gives the ratio 1.77."""
    shape = (3, 288, 384)
    cfg = yaml.safe_load((CONF / "backbone" / "segnet.yaml").read_text())
    arch = yaml.safe_load((CONF / "arch" / "mtan.yaml").read_text())
    arch.pop("name")
    tasks = [SegmentationTask("seg", num_classes=13), DepthTask("depth"), NormalTask("normal")]
    mtan = MTAN(lambda: build_backbone(cfg, shape), tasks, **arch)
    single = ARCHS.get("independent")(lambda: build_backbone(cfg, shape), tasks[:1])
    n_mtan, n_single = count_params(mtan)["total"], count_params(single)["total"]
    assert n_mtan + 3 == 44_229_076 and n_single == 24_981_069
    assert round((n_mtan + 3) / n_single, 2) == 1.77
    # the encoder -> decoder projection is two 3x3 conv (bias) + BN layers of 512 channels
    bridge = mtan.projections[4]
    assert sum(p.numel() for p in bridge.parameters()) == 2 * _conv_bn(512, 512, 3, True)

