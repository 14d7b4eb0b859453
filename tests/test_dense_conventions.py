"""Dense conventions: LibMTL's pipeline on coarse predictions (the default), the named
options (metric_aggregation, miou_classes, upsample_align_corners) on hand-made inputs,
the references' normal-validity rule, and the metric groups' declared state."""
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mtlbench.core.data import TensorSplit
from mtlbench.core.registry import DATASETS, load_all
from mtlbench.engine.trainer import Trainer
from mtlbench.results.store import NEUTRAL_DEFAULTS
from mtlbench.tasks.dense import DenseConventions, DepthTask, L1Task, NormalTask, SegmentationTask

DENSE_DATASETS = ("nyuv2", "cityscapes", "taskonomy", "scenes")
KEYS = ("upsample_align_corners", "metric_aggregation", "miou_classes")
CONF = Path(__file__).resolve().parents[1] / "mtlbench" / "conf" / "dataset"


# ----------------------------------------------------------------------------- LibMTL, by hand
# LibMTL's NYUv2 pipeline, written from median-research-group/LibMTL examples/nyu/main.py
# (NYUtrainer.process_preds: F.interpolate(pred, label size, bilinear, align_corners=True))
# and examples/nyu/utils.py (SegLoss, DepthLoss, NormalLoss, SegMetric, DepthMetric,
# NormalMetric), accumulated over batches as their AbsMetric subclasses do.
def libmtl(batches, num_classes):
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    abs_rec, rel_rec, bs, angles, losses = [], [], [], [], []
    for preds, gts in batches:
        size = gts["seg"].shape[-2:]
        p = {k: F.interpolate(v, size, mode="bilinear", align_corners=True) for k, v in preds.items()}
        label = p["seg"].softmax(1).argmax(1).flatten()
        g = gts["seg"].long().flatten()
        k = (g >= 0) & (g < num_classes)
        conf += torch.bincount(num_classes * g[k] + label[k], minlength=num_classes ** 2).view(num_classes, -1)
        dmask = (gts["depth"].sum(1) != 0).unsqueeze(1)
        n = torch.nonzero(dmask).size(0)
        pd, gd = p["depth"].masked_select(dmask), gts["depth"].masked_select(dmask)
        abs_rec.append(float((pd - gd).abs().sum() / n))
        rel_rec.append(float(((pd - gd).abs() / gd).sum() / n))
        bs.append(pd.size(0))
        pn = p["normal"] / torch.norm(p["normal"], p=2, dim=1, keepdim=True)
        nmask = gts["normal"].sum(1) != 0
        cos = (pn * gts["normal"]).sum(1).masked_select(nmask).clamp(-1, 1)
        angles.append(np.degrees(torch.acos(cos).double().numpy()))
        nm = nmask.float().unsqueeze(1)
        losses.append({"seg": float(F.cross_entropy(p["seg"], gts["seg"], ignore_index=-1)),
                       "depth": float(((p["depth"] - gts["depth"]).abs() * dmask).sum() / n),
                       "normal": float(1 - (pn * gts["normal"] * nm).sum() / torch.nonzero(nm).size(0))})
    h = conf.double()
    iou = h.diag() / (h.sum(0) + h.sum(1) - h.diag())
    a = np.concatenate(angles)
    w = np.array(bs, dtype=float)
    scores = {"seg": {"miou": float(iou.mean()), "pixel_acc": float(h.diag().sum() / h.sum())},
              "depth": {"abs_err": float((np.array(abs_rec) * w).sum() / w.sum()),
                        "rel_err": float((np.array(rel_rec) * w).sum() / w.sum())},
              "normal": {"mean_angle": float(a.mean()), "median_angle": float(np.median(a)),
                         **{f"within_{t:g}": 100 * float(np.mean(a < t)) for t in (11.25, 22.5, 30)}}}
    return scores, losses


class Replay(nn.Module):
    """A 'model' whose predictions are its inputs, split into the tasks' channels."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return dict(zip(self.channels, torch.split(x, list(self.channels.values()), dim=1)))


def test_coarse_predictions_equal_libmtl_pipeline_by_default():
    g = torch.Generator().manual_seed(0)
    C, H, W = 4, 24, 32
    seg_t = torch.randint(0, C, (4, H, W), generator=g)
    seg_t[:, 0] = -1                                               # ignored pixels
    dep_t = torch.rand(4, 1, H, W, generator=g) + 0.5
    dep_t[:, :, :, :3] = 0                                         # invalid depth
    nor_t = F.normalize(torch.randn(4, 3, H, W, generator=g) + torch.tensor([0, 0, 1.5]).view(1, 3, 1, 1), dim=1)
    nor_t[:, :, -2:] = 0                                           # invalid normals
    coarse = torch.randn(4, C + 4, H // 8, W // 8, generator=g)   # predictions at 1/8 resolution
    coarse[:, C] = coarse[:, C].abs() + 0.5
    tasks = [SegmentationTask("seg", C), DepthTask("depth"), NormalTask("normal")]
    split = TensorSplit(coarse, {"seg": seg_t, "depth": dep_t, "normal": nor_t})
    trainer = Trainer(epochs=1, batch_size=2, eval_batch_size=2, device="cpu", progress=False)
    scores, losses = trainer.evaluate(Replay({"seg": C, "depth": 1, "normal": 3}), split, tasks)
    batches = [({"seg": coarse[s, :C], "depth": coarse[s, C:C + 1], "normal": coarse[s, C + 1:]},
                {"seg": seg_t[s], "depth": dep_t[s], "normal": nor_t[s]}) for s in (slice(0, 2), slice(2, 4))]
    ref, ref_losses = libmtl(batches, C)
    for t in ("seg", "depth"):
        assert scores[t] == pytest.approx(ref[t], rel=1e-6)
    n, r = scores["normal"], ref["normal"]
    assert n["mean_angle"] == pytest.approx(r["mean_angle"], abs=1e-3)
    assert abs(n["median_angle"] - r["median_angle"]) <= 0.01                  # the 0.01-degree histogram
    for t in ("within_11.25", "within_22.5", "within_30"):
        assert n[t] == pytest.approx(r[t], abs=1e-9)
    for task in tasks:                                                          # equal batch sizes: plain mean
        assert losses[task.name] == pytest.approx(np.mean([lo[task.name] for lo in ref_losses]), rel=1e-5)
        (p, gt), want = batches[0], ref_losses[0][task.name]
        assert task.loss(p[task.name], gt[task.name]).item() == pytest.approx(want, rel=1e-5)   # training loss
    # the old convention (align_corners=False) gives other numbers on the same predictions
    old = [SegmentationTask("seg", C, conventions=DenseConventions(upsample_align_corners=False))]
    assert trainer.evaluate(Replay({"seg": C, "depth": 1, "normal": 3}), split, old)[0]["seg"] != scores["seg"]


# ----------------------------------------------------------------------------- options
def unit(deg):
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


def normal_batch(degs, invalid=0):
    """One image [1, 3, 1, n]: predictions at ``degs`` to the target (0, 0, 1), plus
    ``invalid`` pixels with an all-zero target."""
    pred = torch.tensor([unit(d) for d in degs] + [[1.0, 0, 0]] * invalid).T.reshape(1, 3, 1, -1)
    target = torch.tensor([[0, 0, 1.0]] * len(degs) + [[0, 0, 0.0]] * invalid).T.reshape(1, 3, 1, -1)
    return pred, target


def run(task, batches):
    group = task.metric_group()
    for p, t in batches:
        group.update(p, t, None)
    return group.compute()


def test_batch_aggregation_weighs_batches_equally_and_averages_medians():
    batch = DenseConventions(metric_aggregation="batch")
    normals = [normal_batch([0, 10, 20], invalid=2), normal_batch([30, 40, 50, 60]), normal_batch([], invalid=3)]
    pix, per = run(NormalTask(), normals), run(NormalTask(conventions=batch), normals)
    assert pix["mean_angle"] == pytest.approx(210 / 7, abs=1e-4)
    assert per["mean_angle"] == pytest.approx((10 + 45) / 2, abs=1e-4)          # the empty batch is skipped
    assert per["median_angle"] == pytest.approx((10 + 45) / 2, abs=1e-4)        # mean of exact per-batch medians
    assert abs(pix["median_angle"] - 30.0) <= 0.006                            # a bin centre
    assert per["within_22.5"] == pytest.approx((100 + 0) / 2) and pix["within_22.5"] == pytest.approx(300 / 7)
    depth = [(torch.full((1, 1, 1, 2), 2.0), torch.tensor([[[[1.0, 0.0]]]])),     # 1 valid pixel, error 1
             (torch.full((1, 1, 1, 3), 4.0), torch.ones(1, 1, 1, 3))]             # 3 valid pixels, error 3
    assert run(DepthTask(), depth)["abs_err"] == pytest.approx((1 + 9) / 4)
    assert run(DepthTask(conventions=batch), depth)["abs_err"] == pytest.approx((1 + 3) / 2)
    assert run(DepthTask(conventions=batch), depth)["rel_err"] == pytest.approx((1 + 3) / 2)
    assert run(L1Task("e", conventions=batch), depth)["l1"] == pytest.approx(((1 + 2) / 2 + 3) / 2)


def test_miou_class_rules():
    gt = torch.tensor([[[0, 0, 1, 1, 2, -1]]])                   # class 3 absent from labels and predictions
    pred = torch.tensor([[[0, 1, 1, 0, 0, 3]]])                  # class 2 labelled, never hit; 3 only on ignore
    logits = 5.0 * F.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    seg = lambda rule: SegmentationTask("seg", 4, conventions=DenseConventions(miou_classes=rule))  # noqa: E731
    iou0, iou1, iou2 = 1 / 4, 1 / 3, 0.0                        # tp / (gt + pred - tp): 1/(2+3-1), 1/(2+2-1), 0/1
    assert run(seg("union"), [(logits, gt)])["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert run(seg("true_positive"), [(logits, gt)])["miou"] == pytest.approx((iou0 + iou1) / 2)   # AdaShare
    assert math.isnan(run(seg("all"), [(logits, gt)])["miou"])                                      # LibMTL / MTAN
    full = torch.tensor([[[0, 0, 1, 1, 2, 3]]])
    assert run(seg("all"), [(logits, full)])["miou"] == pytest.approx(run(seg("union"), [(logits, full)])["miou"])
    assert run(seg("all"), [(logits, gt)])["pixel_acc"] == pytest.approx(2 / 5)


def test_normal_validity_follows_the_references_rule():
    s = 1 / math.sqrt(2)
    pred = torch.tensor([unit(10), unit(20), [0.3, 0.2, 0.1]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[0, 0, 1.0], [s, -s, 0.0], [0, 0, 0.0]]).T.reshape(1, 3, 1, 3)  # sums 1, 0, 0
    scores = run(NormalTask(), [(pred, target)])
    assert scores["mean_angle"] == pytest.approx(10.0, abs=1e-4)                # only the first pixel counts
    assert NormalTask().loss(pred, target).item() == pytest.approx(1 - math.cos(math.radians(10)), abs=1e-6)


def test_bad_option_values_fail_in_one_line_naming_the_key():
    for key, bad in (("metric_aggregation", "image"), ("miou_classes", "present"), ("upsample_align_corners", "yes")):
        with pytest.raises(ValueError, match=f"dataset.{key} must be"):
            DenseConventions(**{key: bad})


def test_dense_datasets_take_the_keys_and_hand_them_to_every_task():
    load_all()
    for name in DENSE_DATASETS:
        assert set(KEYS) <= set(inspect.signature(DATASETS.get(name)).parameters), name
        node = yaml.safe_load((CONF / f"{name}.yaml").read_text())["dataset"]
        assert (node["upsample_align_corners"], node["metric_aggregation"], node["miou_classes"]) == \
            (True, "pixel", "union"), name
    assert NEUTRAL_DEFAULTS["dataset.metric_aggregation"] == "pixel"
    assert NEUTRAL_DEFAULTS["dataset.miou_classes"] == "union"
    assert "dataset.upsample_align_corners" not in NEUTRAL_DEFAULTS              # numbers change: ids too
    data = DATASETS.get("scenes")(None, n_train=2, n_val=1, n_test=1, size=[8, 8], upsample_align_corners=False,
                                  metric_aggregation="batch", miou_classes="all")
    want = DenseConventions(False, "batch", "all")
    assert all(t.conventions == want for t in data.tasks)


# ----------------------------------------------------------------------------- declared state
@pytest.mark.parametrize("aggregation", ["pixel", "batch"])
def test_groups_declare_all_their_state(aggregation):
    """What DDP does (each rank updates on its batches, declared states summed) gives the
    single-process values: every accumulator is declared, with its reduction."""
    g = torch.Generator().manual_seed(3)
    conv = DenseConventions(metric_aggregation=aggregation)
    cases = [(SegmentationTask("seg", 3, conventions=conv), lambda: torch.randn(2, 3, 4, 4, generator=g),
              lambda: torch.randint(-1, 3, (2, 4, 4), generator=g)),
             (DepthTask("depth", deltas=True, conventions=conv), lambda: torch.rand(2, 1, 4, 4, generator=g),
              lambda: torch.rand(2, 1, 4, 4, generator=g) - 0.2),
             (NormalTask(conventions=conv), lambda: torch.randn(2, 3, 4, 4, generator=g),
              lambda: torch.randn(2, 3, 4, 4, generator=g)),
             (L1Task("e", conventions=conv), lambda: torch.rand(2, 1, 4, 4, generator=g),
              lambda: torch.rand(2, 1, 4, 4, generator=g))]
    for task, make_p, make_t in cases:
        batches = [(make_p()[:, :, ::2, ::2], make_t()) for _ in range(2)]
        whole, rank0, rank1 = task.metric_group(), task.metric_group(), task.metric_group()
        for p, t in batches:
            whole.update(p, t, None)
        rank0.update(*batches[0], None)
        rank1.update(*batches[1], None)
        for a, b in zip(rank0.parts(), rank1.parts()):
            for name, (_, reduce) in a.states.items():
                assert reduce == "sum"
                setattr(a, name, getattr(a, name) + getattr(b, name))
        assert rank0.compute() == pytest.approx(whole.compute(), nan_ok=True), task


def test_batch_aggregation_update_never_reads_the_host(monkeypatch):
    conv = DenseConventions(metric_aggregation="batch")
    groups = [NormalTask(conventions=conv).metric_group(), DepthTask(conventions=conv).metric_group()]
    pred, target = normal_batch([5, 15, 25], invalid=1)

    def boom(*a, **k):
        raise AssertionError("host read inside update")

    for attr in ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)
    groups[0].update(pred, target, torch.tensor([True]))
    groups[1].update(pred[:, :1], target[:, 2:], None)
    monkeypatch.undo()
    assert groups[0].compute()["median_angle"] == pytest.approx(15.0, abs=1e-4)
