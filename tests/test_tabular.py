"""Scalar tasks (regression / binary) and the residual MLP backbone (issue 9, items 1-2).

Metrics are checked against scikit-learn on the labelled samples; the backbone against the
ResidualBlock contract and every architecture on label-masked data."""
import math

import numpy as np
import pytest
import torch
from helpers import run_metrics
from sklearn.metrics import explained_variance_score, mean_absolute_error, mean_squared_error, roc_auc_score

import mtlbench.cli
from mtlbench.backbones.base import ResidualBlock, build_backbone
from mtlbench.core.registry import ARCHS, BACKBONES, load_all
from mtlbench.backbones.resmlp import ResMLPBlock
from mtlbench.tasks.tabular import BinaryTask, RegressionTask
from mtlbench.engine.trainer import Trainer

load_all()


def test_regression_metrics_match_sklearn_on_original_scale_with_masks():
    g = torch.Generator().manual_seed(0)
    task = RegressionTask("t", y_mean=30.0, y_std=10.0, metrics=["rmse", "mae", "explained_variance"])
    batches, ys, ps = [], [], []
    for _ in range(3):  # accumulated over batches
        y = torch.randn(50, generator=g)
        p = (y + 0.5 * torch.randn(50, generator=g)).unsqueeze(1)  # heads output [B, 1]
        m = torch.rand(50, generator=g) > 0.4
        batches.append((p, y, m))
        ys.append((y[m] * 10 + 30).numpy()), ps.append((p[m, 0] * 10 + 30).numpy())
    got = run_metrics(task, batches)
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, p)), rel=1e-5)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-5)
    assert got["explained_variance"] == pytest.approx(explained_variance_score(y, p), rel=1e-5)
    assert task.higher_is_better == {"rmse": False, "mae": False, "explained_variance": True}
    # the loss is the MSE on the stored (standardised) scale over labelled samples only
    pr, yr, mr = batches[0]
    assert task.loss(pr, yr, mr).item() == pytest.approx(((pr[mr, 0] - yr[mr]) ** 2).mean().item(), rel=1e-5)


def test_binary_metrics_match_sklearn_and_absent_task_loss_is_exact_zero():
    g = torch.Generator().manual_seed(1)
    task = BinaryTask("b")
    y = (torch.rand(200, generator=g) > 0.7).float()
    p = (2 * y - 1) * 0.8 + torch.randn(200, generator=g)
    m = torch.rand(200, generator=g) > 0.3
    got = run_metrics(task, [(p[:100], y[:100], m[:100]), (p[100:], y[100:], m[100:])])
    assert got["auc"] == pytest.approx(roc_auc_score(y[m].numpy(), p[m].numpy()), rel=1e-6)
    assert got["accuracy"] == pytest.approx(((p[m] > 0) == (y[m] > 0.5)).float().mean().item())
    assert task.higher_is_better == {"auc": True, "accuracy": True}
    bce = torch.nn.functional.binary_cross_entropy_with_logits(p[m], y[m])
    assert task.loss(p, y, m).item() == pytest.approx(bce.item(), rel=1e-5)
    w = torch.zeros(4, requires_grad=True)
    zero = task.loss(w, torch.ones(4), torch.zeros(4, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    # one class only: AUC is undefined (NaN), accuracy still defined
    one = run_metrics(task, [(p, torch.ones(200), None)])
    assert math.isnan(one["auc"]) and 0 <= one["accuracy"] <= 1


def test_resmlp_blocks_follow_the_residual_contract():
    bb = build_backbone({"name": "resmlp", "widths": [16, 16, 8], "norm": "batch", "dropout": 0.1}, (5,))
    assert bb.name == "resmlp" and bb.out_channels == 8 and len(bb.blocks) == 3
    assert all(isinstance(b, ResidualBlock) and b.residual for b in bb.blocks)
    assert bb.blocks[0].downsample is None and bb.blocks[2].downsample is not None  # width 16 -> 8
    bb.eval()
    x = torch.randn(7, 5)
    h = bb.stem(x)
    b0, b2 = bb.blocks[0], bb.blocks[2]
    assert torch.equal(b0.shortcut(h), h)  # identity: a skipped block passes x through
    assert torch.allclose(b0(h), torch.relu(b0.body(h) + h))
    h1 = b0(h)
    assert b2.shortcut(bb.blocks[1](h1)).shape == (7, 8)
    assert bb(x).shape == (7, 8)
    for norm in ("layer", "none"):
        assert build_backbone({"name": "resmlp", "width": 4, "depth": 1, "norm": norm}, (3,))(x[:, :3]).shape == (7, 4)
    with pytest.raises(ValueError, match="norm must be one of"):
        BACKBONES.get("resmlp")((3,), norm="group")


def test_mtan_reads_resmlp_blocks_as_the_block_computes_them():
    """MTAN's feature-vector stage taps (u = relu(fc1(x)), f) must equal the block's own output."""
    from mtlbench.tasks.tabular import RegressionTask as R

    torch.manual_seed(0)
    tasks = [R("a"), R("b")]
    model = ARCHS.get("mtan")(lambda: build_backbone({"name": "resmlp", "width": 8, "depth": 2}, (4,)),
                              tasks, stages="block")
    model.eval()
    x = torch.randn(6, 4)
    taps = model.shared_features(x)
    h = model.backbone.stem(x)
    for blk, (u, f) in zip(model.backbone.blocks, taps):
        assert isinstance(blk, ResMLPBlock)
        h = blk(h)
        assert torch.allclose(f, h, atol=1e-6)
        assert u.shape == (6, blk.fc1.out_features)


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_arch_trains_on_label_masked_scalar_tasks(arch):
    """One-sample-one-task data (the School layout): each task sees its own samples only."""
    from mtlbench.core.data import MTLData, TensorSplit

    g = torch.Generator().manual_seed(0)
    n, tasks = 96, [RegressionTask("r0"), RegressionTask("r1"), BinaryTask("b2")]

    def split():
        x = torch.randn(n, 6, generator=g)
        owner = torch.arange(n) % 3
        y = {"r0": x[:, 0], "r1": x[:, 1] - x[:, 2], "b2": (x[:, 3] > 0).float()}
        masks = {t.name: owner == k for k, t in enumerate(tasks)}
        return TensorSplit(x, {k: torch.where(masks[k], v, torch.zeros_like(v)) for k, v in y.items()}, masks)

    data = MTLData("toy", tasks, (6,), {"train": split(), "val": split(), "test": split()})
    torch.manual_seed(0)
    model = ARCHS.get(arch)(lambda: build_backbone({"name": "resmlp", "width": 8, "depth": 2}, (6,)), tasks)
    from mtlbench.core.registry import BALANCERS

    fit = Trainer(epochs=3, batch_size=16, progress=False, device="cpu").fit(
        model, BALANCERS.get("mgda")(data.task_names), data)
    assert set(fit.test) == {"r0", "r1", "b2"}
    assert set(fit.test["b2"]) == {"auc", "accuracy"} and 0 <= fit.test["b2"]["auc"] <= 1
    assert fit.history[-1]["train_loss"]["r0"] < fit.history[0]["train_loss"]["r0"] * 1.5
    assert all(math.isfinite(v) for v in fit.test_losses.values())


def test_bad_backbone_option_is_one_line_on_the_cli(capsys, tmp_path):
    code = mtlbench.cli.main(["run", "profile=tiny", "trainer.progress=false", f"results_dir={tmp_path}",
                              "dataset=yeast", "backbone.norm=group"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "norm must be one of" in err[0]
