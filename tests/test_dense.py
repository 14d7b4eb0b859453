"""Dense tasks: hand-computed losses and metrics, accumulation, masks, upsampling, heads."""
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_metrics

from mtlbench.tasks import dense
from mtlbench.tasks.dense import (ANGLE_BIN_DEG, ASPPHead, DenseConventions, DenseHead, DepthTask, L1Task,
                                  NormalTask, SegmentationTask, normal_angles)


def logits(labels, num_classes):
    """[B,H,W] labels -> [B,C,H,W] logits whose arg-max is ``labels``."""
    return 5.0 * F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float()


# ----------------------------------------------------------------------------- segmentation
GT = torch.tensor([[[0, 0, 1], [1, -1, 0]]])        # one ignore pixel; class 2 absent
PRED = torch.tensor([[[0, 1, 1], [0, 2, 0]]])       # the ignored pixel predicts class 2


def test_seg_hand_computed_miou_and_pixel_acc():
    task = SegmentationTask("seg", num_classes=3, ignore_index=-1)
    scores = run_metrics(task, [(logits(PRED, 3), GT, None)])
    # valid pairs (gt, pred): (0,0) (0,1) (1,1) (1,0) (0,0): 3 of 5 correct
    assert scores["pixel_acc"] == pytest.approx(3 / 5)
    # IoU0 = 2 / (2 + 1 + 1), IoU1 = 1 / (1 + 1 + 1); class 2 (union 0) left out
    assert scores["miou"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_seg_accumulates_confusion_matrix_not_batch_average():
    task = SegmentationTask("seg", num_classes=3)
    gt2 = torch.full((1, 2, 3), 2)
    a, b = (logits(PRED, 3), GT, None), (logits(gt2, 3), gt2, None)
    two = run_metrics(task, [a, b])
    one = run_metrics(task, [(torch.cat([a[0], b[0]]), torch.cat([GT, gt2]), None)])
    assert two == pytest.approx(one)
    assert two["miou"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)
    per_batch = (run_metrics(task, [a])["miou"] + run_metrics(task, [b])["miou"]) / 2
    assert abs(two["miou"] - per_batch) > 0.05
    assert two["pixel_acc"] == pytest.approx((3 + 6) / (5 + 6))


def test_seg_loss_ignores_pixels_and_matches_cross_entropy():
    torch.manual_seed(0)
    task = SegmentationTask("seg", num_classes=3)
    pred = torch.randn(1, 3, 2, 3)
    expect = F.cross_entropy(pred, GT, ignore_index=-1)
    assert task.loss(pred, GT) == pytest.approx(float(expect))
    all_ignored = torch.full_like(GT, -1)
    pred.requires_grad_(True)
    loss = task.loss(pred, all_ignored)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


# ----------------------------------------------------------------------------- depth
def depth_example():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [3.0, 5.0]]]])     # the 0 pixel is invalid
    return pred, gt


def test_depth_abs_rel_exclude_invalid_pixels():
    task = DepthTask("depth")
    pred, gt = depth_example()
    scores = run_metrics(task, [(pred, gt, None)])
    assert set(scores) == {"abs_err", "rel_err"}               # MTAN's pair by default
    assert scores["abs_err"] == pytest.approx((1 + 0 + 1) / 3)
    assert scores["rel_err"] == pytest.approx((0.5 + 0 + 0.2) / 3)
    assert task.loss(pred, gt).item() == pytest.approx(2 / 3)


def test_depth_deltas_optional_and_safe_for_nonpositive_pred():
    task = DepthTask("depth", deltas=True)
    pred, gt = depth_example()                                    # ratios 2, 1, 1.25
    s = run_metrics(task, [(pred, gt, None)])
    assert s["delta1"] == pytest.approx(100 / 3)
    assert s["delta2"] == pytest.approx(200 / 3)
    assert s["delta3"] == pytest.approx(200 / 3)                 # 2 > 1.25**3
    bad = torch.tensor([[[[0.0, -1.0], [-3.0, 5.0]]]])
    s = run_metrics(task, [(bad, gt, None)])
    assert all(math.isfinite(v) for v in s.values())
    assert s["delta1"] == pytest.approx(100 / 3)                 # only the exact pixel


def test_depth_metrics_are_pixel_weighted_over_the_split():
    task = DepthTask("depth")
    gt1 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])            # 1 valid pixel, error 1
    gt2 = torch.ones(1, 1, 2, 2)                                  # 3 valid pixels... and one more
    gt2[0, 0, 0, 0] = 0.0
    s = run_metrics(task, [(torch.zeros(1, 1, 2, 2) + 2.0, gt1, None),
                           (torch.zeros(1, 1, 2, 2) + 4.0, gt2, None)])
    assert s["abs_err"] == pytest.approx((1 + 3 * 3) / 4)        # not (1 + 3) / 2


# ----------------------------------------------------------------------------- normals
def unit(deg):
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


def normal_example():
    """Six pixels: angles 0, 10, 20, 25, 90 to the target (0, 0, 1) and one invalid pixel."""
    preds = [[0, 0, 2.0], unit(10), unit(20), unit(25), [1.0, 0, 0], [0.3, 0.2, 0.1]]
    targets = [[0, 0, 1.0]] * 5 + [[0, 0, 0.0]]
    pred = torch.tensor(preds).T.reshape(1, 3, 2, 3)
    target = torch.tensor(targets).T.reshape(1, 3, 2, 3)
    return pred, target


def test_normal_metrics_hand_computed():
    task = NormalTask("normal")
    pred, target = normal_example()
    s = run_metrics(task, [(pred, target, None)])
    assert s["mean_angle"] == pytest.approx((0 + 10 + 20 + 25 + 90) / 5, abs=1e-4)
    assert s["median_angle"] == pytest.approx(20.0, abs=ANGLE_BIN_DEG)
    assert s["within_11.25"] == pytest.approx(40.0)
    assert s["within_22.5"] == pytest.approx(60.0)
    assert s["within_30"] == pytest.approx(80.0)
    cos = [math.cos(math.radians(a)) for a in (0, 10, 20, 25, 90)]
    assert task.loss(pred, target).item() == pytest.approx(sum(1 - c for c in cos) / 5, abs=1e-6)
    # the prediction is normalised: scaling it changes nothing
    assert task.loss(7 * pred, target).item() == pytest.approx(task.loss(pred, target).item(), abs=1e-6)


@pytest.mark.parametrize("sizes", [(2, 4), (2, 3)])           # even / odd pixel count, 2 batches
def test_normal_median_matches_numpy_within_bin_width(sizes):
    g = torch.Generator().manual_seed(0)
    task = NormalTask("normal")
    batches, angles = [], []
    for n in sizes:
        pred = torch.randn(n, 3, 5, 6, generator=g)
        target = F.normalize(torch.randn(n, 3, 5, 6, generator=g) + torch.tensor([0, 0, 2.0]).view(1, 3, 1, 1), dim=1)
        target[:, :, 0, 0] = 0.0                                  # invalid pixels
        batches.append((pred, target, None))
        p, t = F.normalize(pred.double(), dim=1), target.double()
        ang = torch.rad2deg(torch.acos((p * t).sum(1).clamp(-1, 1)))     # exact, float64
        valid = torch.ones_like(ang, dtype=torch.bool)
        valid[:, 0, 0] = False
        angles.append(ang[valid].numpy())
    allang = np.concatenate(angles)
    s = run_metrics(task, batches)
    assert allang.size % 2 == sum(sizes) % 2
    assert abs(s["median_angle"] - np.median(allang)) <= ANGLE_BIN_DEG
    assert s["mean_angle"] == pytest.approx(allang.mean(), abs=1e-3)
    assert s["within_30"] == pytest.approx(100 * np.mean(allang < 30), abs=1e-6)


def test_normal_angles_zero_prediction_is_90_degrees():
    t = torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1)
    assert normal_angles(torch.zeros(1, 3, 1, 1), t).item() == pytest.approx(90.0)
    assert normal_angles(-t, t).item() == pytest.approx(180.0)


# ----------------------------------------------------------------------------- L1
def test_l1_task_ignore_value():
    task = L1Task("edges", channels=1, ignore_value=-1)
    pred = torch.tensor([[[[1.0, 5.0], [1.0, 0.0]]]])
    target = torch.tensor([[[[0.5, -1.0], [1.0, 0.2]]]])
    assert task.loss(pred, target).item() == pytest.approx(0.7 / 3)
    assert run_metrics(task, [(pred, target, None)])["l1"] == pytest.approx(0.7 / 3)
    plain = L1Task("keypoints", channels=2)
    p2, t2 = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    assert plain.loss(p2, t2).item() == pytest.approx(1.0)
    assert plain.make_head(4)(torch.zeros(1, 4, 3, 3)).shape == (1, 2, 3, 3)


# ----------------------------------------------------------------------------- upsampling
@pytest.mark.parametrize("align_corners", [True, False])      # True: the default (LibMTL / MTAN)
def test_low_resolution_predictions_are_upsampled_bilinearly(align_corners):
    torch.manual_seed(0)
    up = lambda p, size: F.interpolate(p, size=size, mode="bilinear", align_corners=align_corners)  # noqa: E731
    conv = DenseConventions(upsample_align_corners=align_corners)
    SegmentationTask, DepthTask, NormalTask, L1Task = (  # noqa: N806
        functools.partial(cls, conventions=conv) for cls in (dense.SegmentationTask, dense.DepthTask,
                                                             dense.NormalTask, dense.L1Task))
    seg = SegmentationTask("seg", num_classes=3)
    p, gt = torch.randn(2, 3, 2, 2), torch.randint(-1, 3, (2, 4, 4))
    assert seg.loss(p, gt).item() == pytest.approx(seg.loss(up(p, (4, 4)), gt).item())
    assert run_metrics(seg, [(p, gt, None)]) == pytest.approx(run_metrics(seg, [(up(p, (4, 4)), gt, None)]))
    depth = DepthTask("depth", deltas=True)
    pd, gd = torch.rand(2, 1, 3, 3) + 0.5, torch.rand(2, 1, 6, 6)
    assert depth.loss(pd, gd).item() == pytest.approx(depth.loss(up(pd, (6, 6)), gd).item())
    assert run_metrics(depth, [(pd, gd, None)]) == pytest.approx(run_metrics(depth, [(up(pd, (6, 6)), gd, None)]))
    normal = NormalTask("normal")
    pn, gn = torch.randn(1, 3, 2, 3), F.normalize(torch.randn(1, 3, 4, 6), dim=1)
    assert normal.loss(pn, gn).item() == pytest.approx(normal.loss(up(pn, (4, 6)), gn).item())
    assert run_metrics(normal, [(pn, gn, None)]) == pytest.approx(run_metrics(normal, [(up(pn, (4, 6)), gn, None)]))
    const = torch.full((1, 1, 2, 2), 3.0)                        # a constant map stays constant
    assert L1Task("e").loss(const, torch.full((1, 1, 8, 8), 1.0)).item() == pytest.approx(2.0)


# ----------------------------------------------------------------------------- masks
def all_tasks():
    g = torch.Generator().manual_seed(1)
    return [
        (SegmentationTask("seg", num_classes=3), torch.randn(2, 3, 4, 4, generator=g),
         torch.randint(0, 3, (2, 4, 4), generator=g)),
        (DepthTask("depth", deltas=True), torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)),
        (NormalTask("normal"), torch.randn(2, 3, 4, 4, generator=g),
         F.normalize(torch.randn(2, 3, 4, 4, generator=g), dim=1)),
        (L1Task("edges", ignore_value=0.0), torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_unlabelled_batch_gives_exact_zero_loss_and_backward_works(case):
    task, pred, target = all_tasks()[case]
    target = target.clone()                                       # garbage labels on unlabelled samples
    target[0] = float("nan") if target.is_floating_point() else 7
    target[1] = float("nan") if target.is_floating_point() else 7
    pred = pred.clone().requires_grad_(True)
    loss = task.loss(pred, target, torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)
    scores = run_metrics(task, [(pred.detach(), target, torch.zeros(2, dtype=torch.bool))])
    assert all(math.isnan(v) for v in scores.values())


@pytest.mark.parametrize("case", range(4))
def test_sample_mask_equals_subset(case):
    task, pred, target = all_tasks()[case]
    mask = torch.tensor([False, True])
    assert task.loss(pred, target, mask).item() == pytest.approx(task.loss(pred[1:], target[1:]).item())
    assert run_metrics(task, [(pred, target, mask)]) == pytest.approx(run_metrics(task, [(pred[1:], target[1:], None)]))


def test_metric_directions():
    hib = {}
    for task in (SegmentationTask("seg", 3), DepthTask("depth", deltas=True), NormalTask("normal"), L1Task("edges")):
        hib.update(task.higher_is_better)
    assert hib == {"miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False, "delta1": True,
                   "delta2": True, "delta3": True, "mean_angle": False, "median_angle": False,
                   "within_11.25": True, "within_22.5": True, "within_30": True, "l1": False}


# ----------------------------------------------------------------------------- heads
def test_heads_output_channels_and_size():
    x = torch.randn(2, 8, 5, 7)
    for task, c in ((SegmentationTask("seg", 13), 13), (DepthTask(), 1), (NormalTask(), 3), (L1Task("k", 2), 2)):
        conv = task.make_head(8, unknown_option=1)
        assert isinstance(conv, DenseHead) and conv(x).shape == (2, c, 5, 7)
        aspp = task.make_head(8, head="aspp", aspp_rates=(1, 2), head_channels=4, other=None)
        assert isinstance(aspp, ASPPHead) and len(aspp.branches) == 2
        assert aspp(x).shape == (2, c, 5, 7)
    nulls = NormalTask().make_head(8, head="aspp", aspp_rates=None, head_channels=4, aspp_dropout=None)
    assert len(nulls.branches) == 4 and nulls.branches[0][2].p == 0.5           # None = the default
    assert isinstance(NormalTask().make_head(8, head=None, head_channels=None), DenseHead)
    default = ASPPHead(8, 3, head_channels=4)
    assert [b[0].dilation[0] for b in default.branches] == [6, 12, 18, 24]
    assert [b[0].padding[0] for b in default.branches] == [6, 12, 18, 24]
    assert default(x).shape == (2, 3, 5, 7)
    with pytest.raises(ValueError, match="unknown dense head"):
        NormalTask().make_head(8, head="fpn")
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationTask("seg")


def test_heads_train_end_to_end():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    for task, _, target in all_tasks():
        head = task.make_head(4, head_channels=8)
        opt = torch.optim.SGD(head.parameters(), lr=0.1)
        before = task.loss(head(x[:, :, ::2, ::2]), target).item()  # half resolution -> upsampled
        for _ in range(5):
            opt.zero_grad()
            task.loss(head(x[:, :, ::2, ::2]), target).backward()
            opt.step()
        assert task.loss(head(x[:, :, ::2, ::2]), target).item() < before


def test_metric_updates_never_read_tensors_to_the_host(monkeypatch):
    """update() accumulates on the device: no .item() / float() / bool() / .cpu() inside it."""
    cases = all_tasks()
    metrics = [(task.metrics(), pred, target) for task, pred, target in cases]

    def boom(*a, **k):
        raise AssertionError("host read inside Metric.update")

    for attr in ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)
    for ms, pred, target in metrics:
        for m in ms:
            m.update(pred[:, :, ::2, ::2], target, torch.tensor([True, False]))   # upsampling + mask
            m.update(pred, target, None)
    monkeypatch.undo()
    for ms, _, _ in metrics:
        assert all(math.isfinite(m.compute()) for m in ms)
