"""The dense tasks' metric groups: each task's metrics computed once per batch.

``mtlbench.tasks.dense`` states the conventions (and which reference each follows); this
module computes them. A group (``core.tasks.MetricGroup``) is updated once per batch with
the prediction at any resolution (upsampled to the label's once, bilinear with the
dataset's ``upsample_align_corners``) and shares its intermediates between its metrics:
one arg-max for mIoU and pixel accuracy, one angle map for the mean, the median and the
within-t counts, one masked error map for the depth errors (and the loss, through
``depth_terms`` / ``normal_terms``, which ``Task.eval_update`` and ``Task.loss`` share).

Device rules: every update stays on the device (no ``.item()``, no boolean indexing, no
host sync); accumulators are declared (``add_state``) and updated in place or as small
tensors; the only per-batch buffers are the elementwise intermediates of the batch (the
ones-vector the histograms count with is allocated once and reused).

Aggregation (``metric_aggregation``): ``pixel`` sums over all valid pixels of the split
(states ``sums`` [k] float64, ``count``); ``batch`` averages per-batch values with equal
weight per batch (states ``batch_values`` [k] float64, ``batches``: batches with at least
one valid pixel), the per-batch median exact (a sort of the batch's angles, invalid ones
sent to +inf, read at the order statistics given by the device-side count).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mtlbench.core.tasks import MetricGroup

DELTA_BASE = 1.25
ANGLE_BIN_DEG = 0.01
WITHIN_DEG = (11.25, 22.5, 30.0)
AGGREGATIONS = ("pixel", "batch")
MIOU_CLASSES = ("union", "true_positive", "all")
_EPS = 1e-6
_F64 = torch.float64


def resize_to(pred: torch.Tensor, target: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """``pred`` upsampled bilinearly to ``target``'s spatial size (unchanged when equal)."""
    size = tuple(target.shape[-2:])
    if tuple(pred.shape[-2:]) != size:
        pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=bool(align_corners))
    return pred


def with_mask(valid: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``valid`` [B, ...] restricted to the labelled samples of ``mask`` [B]."""
    if mask is None:
        return valid
    m = mask.to(device=valid.device, dtype=torch.bool)
    return valid & m.view(-1, *([1] * (valid.dim() - 1)))


def as_map(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """A [B, H, W] target of a one-channel prediction as [B, 1, H, W]."""
    return target.unsqueeze(1) if target.dim() == 3 and pred.shape[1] == 1 else target


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else _F64


def ones_for(owner, idx: torch.Tensor) -> torch.Tensor:
    """int64 ones as long as ``idx`` on its device, from a vector ``owner`` keeps and reuses."""
    buf = owner.__dict__.get("_ones")
    if buf is None or buf.numel() < idx.numel() or buf.device != idx.device:
        buf = owner._ones = torch.ones(idx.numel(), dtype=torch.long, device=idx.device)
    return buf[: idx.numel()]


def masked_mean(masked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum of ``masked`` (already 0 off ``valid``) over the valid count; exact 0 when none."""
    return masked.sum() / valid.sum().clamp_min(1).to(masked.dtype)


# ----------------------------------------------------------------------------- shared terms
def depth_terms(pred, target, mask) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(|pred - gt| on valid pixels and 0 elsewhere, gt with 1 off the valid pixels, valid):
    valid = ``target > 0`` on labelled samples; no NaN reaches the gradient."""
    valid = with_mask(target > 0, mask)
    gt = torch.where(valid, target, 1.0)
    return torch.where(valid, (pred - gt).abs(), 0.0), gt, valid


def normal_valid(target: torch.Tensor, mask) -> torch.Tensor:
    """The references' rule (LibMTL / MTAN: ``sum(gt, dim=1) != 0``), non-finite labels excluded."""
    s = target[:, 0] + target[:, 1] + target[:, 2]
    return with_mask((s != 0) & torch.isfinite(s), mask)


def normal_terms(pred, target, mask):
    """(p . gt, |p|^2, gt, valid) [B, H, W] with gt = target on valid pixels, 0 elsewhere."""
    valid = normal_valid(target, mask)
    gt = torch.where(valid.unsqueeze(1), target, 0.0)
    p0, p1, p2 = pred.unbind(1)
    g0, g1, g2 = gt.unbind(1)
    dot = torch.addcmul(torch.addcmul(p0 * g0, p1, g1), p2, g2)
    sq = torch.addcmul(torch.addcmul(p0 * p0, p1, p1), p2, p2)
    return dot, sq, gt, valid


def normal_cos_loss(dot, sq, valid) -> torch.Tensor:
    """Mean over valid pixels of 1 - (p / max(|p|, 1e-12)) . t, as ``F.normalize`` (MTAN /
    LibMTL's normal loss); zero-gradient (not NaN) at a zero prediction."""
    return masked_mean(torch.where(valid, 1.0 - dot / sq.clamp_min(1e-24).sqrt(), 0.0), valid)


def angles_from(pred, gt, dot, sq) -> torch.Tensor:
    """Degrees [B, H, W]: atan2(|p x t|, p . t) of the unnormalised vectors (scale-free);
    90 where the prediction has zero length (|p|^2 == 0, i.e. |p| below ~1e-22 in float32)."""
    p0, p1, p2 = pred.unbind(1)
    g0, g1, g2 = gt.unbind(1)
    c0 = torch.addcmul(p1 * g2, p2, g1, value=-1.0)
    c1 = torch.addcmul(p2 * g0, p0, g2, value=-1.0)
    c2 = torch.addcmul(p0 * g1, p1, g0, value=-1.0)
    cross = torch.addcmul(torch.addcmul(c0 * c0, c1, c1), c2, c2).sqrt_()
    ang = torch.atan2(cross, dot).mul_(180.0 / math.pi)
    return torch.where(sq > 0, ang, 90.0)


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees [B, H, W] between ``pred`` and ``target`` [B, 3, H, W]; 90 where the
    prediction is zero."""
    p0, p1, p2 = pred.unbind(1)
    g0, g1, g2 = target.unbind(1)
    dot = p0 * g0 + p1 * g1 + p2 * g2
    return angles_from(pred, target, dot, p0 * p0 + p1 * p1 + p2 * p2)


# ----------------------------------------------------------------------------- groups
class DenseGroup(MetricGroup):
    """Base: upsampling and the pixel / batch accumulators of ``k`` pooled values (plus
    ``extra`` per-batch values in ``batch`` mode). Subclasses implement ``add`` (on a
    prediction already at the label resolution)."""

    def __init__(self, k: int, align_corners: bool = True, aggregation: str = "pixel", extra: int = 0):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"dataset.metric_aggregation must be one of {', '.join(AGGREGATIONS)} "
                             f"(got {aggregation!r})")
        self.align_corners, self.aggregation = bool(align_corners), aggregation
        if aggregation == "pixel":
            self.add_state("sums", torch.zeros(k, dtype=_F64))
            self.add_state("count", torch.zeros((), dtype=torch.long))
        else:
            self.add_state("batch_values", torch.zeros(k + extra, dtype=_F64))
            self.add_state("batches", torch.zeros((), dtype=torch.long))

    def update(self, pred, target, mask) -> None:
        target = as_map(target, pred)
        self.add(resize_to(pred.detach(), target, self.align_corners), target, mask)

    def add(self, pred, target, mask) -> None:
        raise NotImplementedError

    def pool(self, sums: Sequence[torch.Tensor], n: torch.Tensor, batch: Sequence[torch.Tensor] = ()) -> None:
        """Accumulate one batch: ``sums`` over its ``n`` valid pixels (``pixel``), or their
        means followed by the ``batch`` values as they are (``batch``: batches with n > 0)."""
        dt = _sum_dtype(n.device)
        s = torch.stack([v.to(dt) for v in sums])
        if self.aggregation == "pixel":
            self.sums = self.sums.to(dt) + s
            self.count = self.count + n
            return
        has = n > 0
        means = s / n.clamp_min(1).to(dt)
        values = torch.cat([means, torch.stack([v.to(dt) for v in batch])]) if batch else means
        self.batch_values = self.batch_values.to(dt) + torch.where(has, values, 0.0)
        self.batches = self.batches + has.long()

    def pooled(self) -> Optional[list]:
        """The pooled values (pixel means, or means of per-batch values); None when empty."""
        if self.aggregation == "pixel":
            n = int(self.count)
            return None if n == 0 else [v / n for v in self.sums.double().cpu().tolist()]
        b = int(self.batches)
        return None if b == 0 else [v / b for v in self.batch_values.double().cpu().tolist()]


class SegMetrics(MetricGroup):
    """mIoU and pixel accuracy from one confusion matrix over the split (rows = truth),
    whatever the aggregation (MTAN's and LibMTL's confusion matrices are pooled too)."""

    higher_is_better = {"miou": True, "pixel_acc": True}

    def __init__(self, num_classes: int, ignore_index: int = -1, align_corners: bool = True,
                 miou_classes: str = "union"):
        if miou_classes not in MIOU_CLASSES:
            raise ValueError(f"dataset.miou_classes must be one of {', '.join(MIOU_CLASSES)} (got {miou_classes!r})")
        self.align_corners = bool(align_corners)
        self.num_classes, self.ignore_index, self.miou_classes = int(num_classes), int(ignore_index), miou_classes
        c = self.num_classes
        self.add_state("counts", torch.zeros(c * c + 1, dtype=torch.long))  # last bin: invalid pixels

    @property
    def confusion(self) -> torch.Tensor:
        c = self.num_classes
        return self.counts[: c * c].view(c, c)

    def update(self, pred, target, mask) -> None:
        self.add(resize_to(pred.detach(), target, self.align_corners), target, mask)

    def add(self, pred, target, mask) -> None:
        c = self.num_classes
        label = pred.max(dim=1).indices  # the first maximal class, as argmax (faster on CPU)
        valid = (target >= 0) & (target < c)
        if 0 <= self.ignore_index < c:
            valid = valid & (target != self.ignore_index)
        idx = torch.where(with_mask(valid, mask), target * c + label, c * c).reshape(-1)
        self.counts.index_add_(0, idx, ones_for(self, idx))

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class (NaN where the union is 0 over the split)."""
        h = self.confusion.double().cpu()
        tp = h.diag()
        union = h.sum(0) + h.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> Dict[str, float]:
        h = self.confusion.double().cpu()
        if float(h.sum()) == 0:
            return {"miou": float("nan"), "pixel_acc": float("nan")}
        iou, tp = self.per_class_iou(), h.diag()
        if self.miou_classes == "union":
            miou = torch.nanmean(iou)
        elif self.miou_classes == "true_positive":
            miou = iou[tp > 0].mean() if bool((tp > 0).any()) else torch.tensor(float("nan"))
        else:
            miou = iou.mean()  # NaN as soon as one class has a zero union (LibMTL / MTAN)
        return {"miou": float(miou), "pixel_acc": float(tp.sum() / h.sum())}


class DepthMetrics(DenseGroup):
    """abs_err, rel_err (and delta1..3 in % with ``deltas``) over valid (> 0) pixels."""

    def __init__(self, deltas: bool = False, align_corners: bool = True, aggregation: str = "pixel"):
        self.deltas = bool(deltas)
        names = ["abs_err", "rel_err"] + (["delta1", "delta2", "delta3"] if self.deltas else [])
        self.higher_is_better = {n: n.startswith("delta") for n in names}
        super().__init__(len(names), align_corners, aggregation)

    def add(self, pred, target, mask, terms=None) -> None:
        am, gt, valid = depth_terms(pred, target, mask) if terms is None else terms
        dt = _sum_dtype(am.device)
        sums = [am.sum(dtype=dt), (am / gt).sum(dtype=dt)]
        if self.deltas:
            p = pred.clamp_min(_EPS)
            ratio = torch.where(valid, torch.maximum(p / gt, gt / p), math.inf)
            sums += [(ratio < DELTA_BASE ** k).sum() for k in (1, 2, 3)]
        self.pool(sums, valid.sum())

    def compute(self) -> Dict[str, float]:
        v = self.pooled()
        scale = {"delta1": 100.0, "delta2": 100.0, "delta3": 100.0}
        return {n: float("nan") if v is None else v[i] * scale.get(n, 1.0) for i, n in enumerate(self.names)}


class NormalMetrics(DenseGroup):
    """Angles in degrees over valid pixels: mean, median (pixel: a ``bin_deg`` histogram,
    reported at the bin centre; batch: exact per batch), % within 11.25 / 22.5 / 30."""

    higher_is_better = {"mean_angle": False, "median_angle": False, "within_11.25": True,
                        "within_22.5": True, "within_30": True}

    def __init__(self, align_corners: bool = True, aggregation: str = "pixel", bin_deg: float = ANGLE_BIN_DEG):
        super().__init__(1 + len(WITHIN_DEG), align_corners, aggregation, extra=1)  # batch: + median
        self.bin_deg = float(bin_deg)
        self.bins = int(math.ceil(180.0 / self.bin_deg))
        if aggregation == "pixel":
            self.add_state("hist", torch.zeros(self.bins + 1, dtype=torch.long))  # last bin: invalid pixels

    def add(self, pred, target, mask, terms=None) -> None:
        dot, sq, gt, valid = normal_terms(pred, target, mask) if terms is None else terms
        ang = angles_from(pred, gt, dot, sq)
        n = valid.sum()
        sums = [torch.where(valid, ang, 0.0).sum(dtype=_sum_dtype(ang.device))]
        ang_v = torch.where(valid, ang, math.inf)  # invalid pixels: never within, sorted last
        sums += [(ang_v < t).sum() for t in WITHIN_DEG]
        if self.aggregation == "pixel":
            idx = torch.floor(ang / self.bin_deg).long().clamp_(0, self.bins - 1)
            idx = torch.where(valid, idx, self.bins).reshape(-1)
            self.hist.index_add_(0, idx, ones_for(self, idx))
            self.pool(sums, n)
        else:
            srt = ang_v.reshape(-1).sort().values
            ks = torch.stack([(n - 1).clamp_min(0) // 2, n // 2])
            self.pool(sums, n, [srt.gather(0, ks).double().mean()])

    def median(self) -> float:
        cum = self.hist[: self.bins].cpu().cumsum(0)
        n = int(cum[-1])
        if n == 0:
            return float("nan")
        # 0-based order statistics averaged by numpy's median: (n-1)//2 and n//2
        ks = torch.tensor([(n - 1) // 2, n // 2])
        b = torch.searchsorted(cum, ks, right=True).double()
        return float(((b + 0.5) * self.bin_deg).mean())

    def compute(self) -> Dict[str, float]:
        v = self.pooled()
        if v is None:
            return {n: float("nan") for n in self.names}
        median = self.median() if self.aggregation == "pixel" else v[4]
        return {"mean_angle": v[0], "median_angle": median,
                **{f"within_{t:g}": 100.0 * v[1 + i] for i, t in enumerate(WITHIN_DEG)}}


class L1Metrics(DenseGroup):
    """``l1``: mean absolute error over the valid elements (``valid_fn(target)`` on
    labelled samples)."""

    higher_is_better = {"l1": False}

    def __init__(self, valid_fn, align_corners: bool = True, aggregation: str = "pixel"):
        super().__init__(1, align_corners, aggregation)
        self.valid_fn = valid_fn

    def add(self, pred, target, mask, terms=None) -> None:
        am, valid = l1_terms(pred, target, mask, self.valid_fn) if terms is None else terms
        self.pool([am.sum(dtype=_sum_dtype(am.device))], valid.sum())

    def compute(self) -> Dict[str, float]:
        v = self.pooled()
        return {"l1": float("nan") if v is None else v[0]}


def l1_terms(pred, target, mask, valid_fn):
    """(|pred - target| on valid elements, 0 elsewhere; valid)."""
    valid = with_mask(valid_fn(target), mask)
    gt = torch.where(valid, target, 0.0)
    return torch.where(valid, (pred - gt).abs(), 0.0), valid
