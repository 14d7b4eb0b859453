"""Dense-prediction tasks (segmentation, depth, surface normals, L1 maps), their heads and metrics.

Shapes. ``pred`` is what a head outputs, ``[B, C, h, w]`` at the backbone's resolution;
targets are at the label resolution ``[H, W]``. When ``(h, w) != (H, W)`` every loss and
metric first upsamples ``pred`` bilinearly (``align_corners=False``) to ``(H, W)``; the
metrics are always computed at the label resolution.

Masks. ``mask`` is a per-SAMPLE bool ``[B]`` (or None). Pixels of unlabelled samples count
for neither losses nor metrics. Every loss is a mean over the valid pixels of the batch
(pixel-weighted, not a mean of per-image means); a batch with no valid pixel gives an
exact 0 that is still attached to ``pred``'s graph (``backward`` works, gradients are 0).

Metrics accumulate sums and counts on the device over a whole split (no host sync in
``update``: no ``.item()``, no boolean indexing); ``compute()`` reads them once.

Definitions and the conventions they follow:

* ``SegmentationTask``: loss = pixel-wise cross-entropy, mean over pixels whose label is
  not ``ignore_index`` (``F.cross_entropy(..., ignore_index)``, as MTAN / LibMTL / AdaShare).
  ``miou``: one confusion matrix accumulated over the whole split (pred = arg-max of the
  upsampled logits; pixels labelled ``ignore_index`` or outside ``[0, num_classes)`` skipped),
  IoU_c = TP_c / (TP_c + FP_c + FN_c), and mIoU = mean over the classes whose union is
  non-zero over the split (classes absent from both prediction and ground truth are left
  out, i.e. ``nanmean``, as LibMTL's ``ConfMatrix`` and AdaShare's accumulated confusion
  matrix). This is NOT MTAN's original per-batch mIoU average. ``pixel_acc`` = correct /
  valid pixels over the split. Both are fractions in [0, 1], higher is better.
* ``DepthTask``: valid pixels are ``target > 0``. Loss = L1 over valid pixels (MTAN).
  ``abs_err`` = mean |pred - gt| and ``rel_err`` = mean |pred - gt| / gt over all valid pixels
  of the split (pixel-weighted, MTAN / LibMTL); lower is better. With ``deltas=True`` also
  ``delta1..3`` = % of valid pixels with max(pred/gt, gt/pred) < 1.25**k (Eigen et al. 2014),
  higher is better; pred is clamped to >= 1e-6 in the ratio so it never produces inf/nan.
  Off by default so NYUv2 tables match MTAN's (abs, rel).
* ``NormalTask``: predictions are L2-normalised over the channel dim (``F.normalize``);
  valid pixels have a target that is not all-zero. Loss = mean over valid pixels of
  1 - cos(pred, target) (MTAN's normal loss; MTAN tests ``sum != 0``, here ``any != 0``).
  Metrics in degrees over all valid pixels of the split (MTAN / LibMTL / Eigen & Fergus
  2015): ``mean_angle``, ``median_angle`` (lower is better), ``within_11.25``,
  ``within_22.5``, ``within_30`` = % of pixels with angle < t (higher is better). The angle is
  atan2(|p x t|, p . t) of the normalised vectors (the same angle as MTAN's
  acos(clamp(p . t)), but accurate near 0 and 180 degrees); a zero prediction counts as 90.
  The median is taken from a histogram of 0.01-degree bins over [0, 180] accumulated on
  the device: it reports bin centres, so it is within 0.005 degrees of the exact median
  (never more than one bin width, 0.01 degrees, off).
* ``L1Task`` (Taskonomy edges / keypoints, as AdaShare): loss = mean absolute error over the
  elements whose target is not ``ignore_value`` (all elements when None; NaN allowed);
  metric ``l1`` = the same, pixel-weighted over the split, lower is better.

Heads (``make_head(in_channels, **options)``; unknown option keys are ignored):
``head="conv"`` (default): 3x3 conv -> BN -> ReLU -> 1x1 conv to the task's channels
(``head_channels`` default min(in_channels, 256); MTAN's SegNet prediction layers are the
same 3x3 -> 1x1 convs without BN/ReLU). ``head="aspp"``: DeepLab-v2
ASPP as AdaShare uses it: for each rate r in ``aspp_rates`` (default (6, 12, 18, 24)) a
branch 3x3 conv (dilation r, padding r) -> ReLU -> Dropout -> 1x1 conv -> ReLU -> Dropout
-> 1x1 conv to the outputs; the branch outputs are summed (``head_channels`` default 1024,
``aspp_dropout`` default 0.5).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.core.tasks import Metric, Task

DELTA_BASE = 1.25
ANGLE_BIN_DEG = 0.01
_EPS = 1e-6


# ----------------------------------------------------------------------------- helpers
def resize_to(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``pred`` upsampled bilinearly (align_corners=False) to ``target``'s spatial size."""
    size = tuple(target.shape[-2:])
    if tuple(pred.shape[-2:]) != size:
        pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
    return pred


def _with_mask(valid: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``valid`` [B, ...] restricted to the labelled samples of ``mask`` [B]."""
    if mask is None:
        return valid
    m = mask.to(device=valid.device, dtype=torch.bool)
    return valid & m.view(-1, *([1] * (valid.dim() - 1)))


def _as_map(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """A [B, H, W] target of a one-channel prediction as [B, 1, H, W]."""
    return target.unsqueeze(1) if target.dim() == 3 and pred.shape[1] == 1 else target


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _masked_loss(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_pixel`` over ``valid``; exact 0 (on the graph) when nothing is valid."""
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return total / valid.sum().clamp_min(1).to(per_pixel.dtype)


# ----------------------------------------------------------------------------- metrics
class PixelMean(Metric):
    """Mean of a per-pixel quantity over all valid pixels of a split (pixel-weighted).

    ``valid_fn(pred, target) -> bool map`` and ``value_fn(pred, target) -> map`` of the same
    shape, both on the resized, detached prediction; ``scale`` multiplies the result
    (100 for percentages)."""

    def __init__(self, name: str, higher_is_better: bool, value_fn: Callable, valid_fn: Callable,
                 scale: float = 1.0):
        self.name, self.higher_is_better = name, higher_is_better
        self.value_fn, self.valid_fn, self.scale = value_fn, valid_fn, scale
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.long))

    def update(self, pred, target, mask) -> None:
        target = _as_map(target, pred)
        pred = resize_to(pred.detach(), target)
        valid = _with_mask(self.valid_fn(pred, target), mask)
        values = self.value_fn(pred, target)
        s = torch.where(valid, values, torch.zeros_like(values)).sum(dtype=_sum_dtype(values.device))
        self.total = self.total.to(s.dtype) + s
        self.count = self.count + valid.sum()

    def compute(self) -> float:
        if int(self.count) == 0:
            return float("nan")
        return float(self.total) / float(self.count) * self.scale


class ConfusionMetric(Metric):
    """``miou`` or ``pixel_acc`` from a confusion matrix accumulated over the split (rows =
    ground truth). mIoU leaves out classes with zero union over the split (LibMTL / AdaShare)."""

    higher_is_better = True

    def __init__(self, name: str, num_classes: int, ignore_index: int = -1):
        if name not in ("miou", "pixel_acc"):
            raise ValueError(f"unknown segmentation metric '{name}'")
        self.name, self.num_classes, self.ignore_index = name, num_classes, ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long))  # rows = truth

    def update(self, pred, target, mask) -> None:
        c = self.num_classes
        pr = resize_to(pred.detach(), target).argmax(dim=1).reshape(-1)
        valid = (target != self.ignore_index) & (target >= 0) & (target < c)
        valid, gt = _with_mask(valid, mask).reshape(-1), target.reshape(-1).long()
        # invalid pixels go to an overflow bin (index c*c) that is dropped: no host sync
        idx = torch.where(valid, gt * c + pr, torch.full_like(gt, c * c))
        hist = torch.zeros(c * c + 1, dtype=torch.long, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
        self.confusion = self.confusion + hist[: c * c].view(c, c)

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class (NaN where the union is 0 over the split)."""
        h = self.confusion.double().cpu()
        tp = h.diag()
        union = h.sum(0) + h.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> float:
        if int(self.confusion.sum()) == 0:
            return float("nan")
        if self.name == "pixel_acc":
            h = self.confusion.double().cpu()
            return float(h.diag().sum() / h.sum())
        return float(torch.nanmean(self.per_class_iou()))


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees [B, H, W] between ``pred`` and ``target`` [B, 3, H, W] (both normalised
    first); atan2(|p x t|, p . t); 90 where the prediction is all-zero."""
    p = F.normalize(pred, dim=1)
    t = F.normalize(target, dim=1)
    dot = (p * t).sum(1)
    cross = torch.linalg.cross(p, t, dim=1).norm(dim=1)
    ang = torch.rad2deg(torch.atan2(cross, dot))
    return torch.where(pred.abs().sum(1) > 0, ang, torch.full_like(ang, 90.0))


def _normal_valid(pred, target):
    """Pixels whose target normal is not all-zero (and finite)."""
    return (target != 0).any(dim=1) & torch.isfinite(target).all(dim=1)


class MedianAngle(Metric):
    """Median angle (degrees) over all valid pixels of a split, from a device histogram of
    ``bin_deg``-wide bins over [0, 180]; the result is within bin_deg / 2 of the exact median."""

    name, higher_is_better = "median_angle", False

    def __init__(self, bin_deg: float = ANGLE_BIN_DEG):
        self.bin_deg = bin_deg
        self.bins = int(math.ceil(180.0 / bin_deg))
        self.add_state("hist", torch.zeros(self.bins + 1, dtype=torch.long))  # last bin: invalid pixels

    def update(self, pred, target, mask) -> None:
        pred = resize_to(pred.detach(), target)
        valid = _with_mask(_normal_valid(pred, target), mask).reshape(-1)
        ang = normal_angles(pred, target).reshape(-1)
        idx = torch.floor(ang / self.bin_deg).long().clamp_(0, self.bins - 1)
        idx = torch.where(valid, idx, torch.full_like(idx, self.bins))  # overflow bin: dropped
        self.hist = self.hist.index_add(0, idx, torch.ones_like(idx))

    def compute(self) -> float:
        cum = self.hist[: self.bins].cpu().cumsum(0)
        n = int(cum[-1])
        if n == 0:
            return float("nan")
        # 0-based order statistics averaged by numpy's median: (n-1)//2 and n//2
        ks = torch.tensor([(n - 1) // 2, n // 2])
        b = torch.searchsorted(cum, ks, right=True).double()
        return float(((b + 0.5) * self.bin_deg).mean())


# ----------------------------------------------------------------------------- heads
class DenseHead(nn.Sequential):
    """3x3 conv -> BN -> ReLU -> 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, head_channels: Optional[int] = None):
        hc = int(head_channels or min(in_channels, 256))
        super().__init__(nn.Conv2d(in_channels, hc, 3, padding=1, bias=False), nn.BatchNorm2d(hc),
                         nn.ReLU(inplace=True), nn.Conv2d(hc, out_channels, 1))


class ASPPHead(nn.Module):
    """DeepLab-v2 ASPP (as in AdaShare): parallel dilated branches, outputs summed."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18, 24),
                 head_channels: Optional[int] = None, dropout: float = 0.5):
        super().__init__()
        hc = int(head_channels or 1024)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, hc, 3, padding=int(r), dilation=int(r)), nn.ReLU(inplace=True),
                          nn.Dropout(dropout), nn.Conv2d(hc, hc, 1), nn.ReLU(inplace=True),
                          nn.Dropout(dropout), nn.Conv2d(hc, out_channels, 1))
            for r in rates)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


HEADS = ("conv", "aspp")


def make_dense_head(in_channels: int, out_channels: int, head: Optional[str] = "conv",
                    aspp_rates: Optional[Sequence[int]] = None, head_channels: Optional[int] = None,
                    aspp_dropout: Optional[float] = None, **_ignored) -> nn.Module:
    """A dense head from backbone head options; an option given as None takes its default."""
    if head in (None, "conv"):
        return DenseHead(in_channels, out_channels, head_channels)
    if head == "aspp":
        rates = [int(r) for r in (aspp_rates if aspp_rates is not None else (6, 12, 18, 24))]
        return ASPPHead(in_channels, out_channels, rates, head_channels,
                        0.5 if aspp_dropout is None else float(aspp_dropout))
    raise ValueError(f"unknown dense head '{head}'; known heads: {', '.join(HEADS)}")


# ----------------------------------------------------------------------------- tasks
class DenseTask(Task):
    """Base of the dense tasks: ``out_channels`` output maps from a conv or ASPP head."""

    kind = "dense"
    out_channels = 1

    def make_head(self, in_channels, **options):
        return make_dense_head(in_channels, self.out_channels, **options)


class SegmentationTask(DenseTask):
    kind = "segmentation"

    def __init__(self, name: str = "seg", num_classes: Optional[int] = None, ignore_index: int = -1):
        super().__init__(name)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"SegmentationTask '{name}' needs num_classes >= 2 (got {num_classes!r})")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.out_channels = self.num_classes

    def loss(self, pred, target, mask=None):
        pred = resize_to(pred, target)
        valid = _with_mask(target != self.ignore_index, mask)
        tgt = target.masked_fill(~valid, self.ignore_index)
        ce = F.cross_entropy(pred, tgt, ignore_index=self.ignore_index, reduction="none")
        return _masked_loss(ce, valid)

    def metrics(self) -> List[Metric]:
        return [ConfusionMetric(m, self.num_classes, self.ignore_index) for m in ("miou", "pixel_acc")]


def _depth_valid(pred, target):
    return target > 0


def _rel_err(pred, target):
    gt = torch.where(target > 0, target, torch.ones_like(target))
    return (pred - gt).abs() / gt


def _delta(k: int):
    def fn(pred, target):
        gt = torch.where(target > 0, target, torch.ones_like(target))
        p = pred.clamp_min(_EPS)
        ratio = torch.maximum(p / gt, gt / p)
        return (ratio < DELTA_BASE ** k).to(pred.dtype)
    return fn


class DepthTask(DenseTask):
    kind = "depth"
    out_channels = 1

    def __init__(self, name: str = "depth", deltas: bool = False):
        super().__init__(name)
        self.deltas = bool(deltas)

    def loss(self, pred, target, mask=None):
        target = _as_map(target, pred)
        pred = resize_to(pred, target)
        valid = _with_mask(target > 0, mask)
        gt = torch.where(valid, target, torch.zeros_like(target))
        return _masked_loss((pred - gt).abs(), valid)

    def metrics(self) -> List[Metric]:
        ms: List[Metric] = [
            PixelMean("abs_err", False, lambda p, t: (p - t).abs(), _depth_valid),
            PixelMean("rel_err", False, _rel_err, _depth_valid)]
        if self.deltas:
            ms += [PixelMean(f"delta{k}", True, _delta(k), _depth_valid, scale=100.0) for k in (1, 2, 3)]
        return ms


class NormalTask(DenseTask):
    kind = "normal"
    out_channels = 3

    def __init__(self, name: str = "normal"):
        super().__init__(name)

    def loss(self, pred, target, mask=None):
        pred = F.normalize(resize_to(pred, target), dim=1)
        valid = _with_mask(_normal_valid(pred, target), mask)
        gt = torch.where(valid.unsqueeze(1), target, torch.zeros_like(target))
        return _masked_loss(1.0 - (pred * gt).sum(1), valid)

    def metrics(self) -> List[Metric]:
        ms: List[Metric] = [PixelMean("mean_angle", False, normal_angles, _normal_valid), MedianAngle()]
        for t in (11.25, 22.5, 30):
            ms.append(PixelMean(f"within_{t:g}", True, lambda p, g, t=t: (normal_angles(p, g) < t).to(p.dtype),
                                _normal_valid, scale=100.0))
        return ms


class L1Task(DenseTask):
    """Dense L1 regression (Taskonomy edges / keypoints)."""

    kind = "l1"

    def __init__(self, name: str, channels: int = 1, ignore_value: Optional[float] = None):
        super().__init__(name)
        self.out_channels = int(channels)
        self.ignore_value = ignore_value

    def _valid(self, pred, target):
        v = self.ignore_value
        if v is None:
            return ~torch.isnan(target)
        if isinstance(v, float) and math.isnan(v):
            return ~torch.isnan(target)
        return (target != v) & ~torch.isnan(target)

    def loss(self, pred, target, mask=None):
        target = _as_map(target, pred)
        pred = resize_to(pred, target)
        valid = _with_mask(self._valid(pred, target), mask)
        gt = torch.where(valid, target, torch.zeros_like(target))
        return _masked_loss((pred - gt).abs(), valid)

    def metrics(self) -> List[Metric]:
        return [PixelMean("l1", False, lambda p, t: (p - t).abs(), self._valid)]
