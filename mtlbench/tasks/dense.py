"""Dense-prediction tasks (segmentation, depth, surface normals, L1 maps), their heads and
the conventions of their losses and metrics (computed in ``mtlbench.tasks.dense_metrics``).

Each convention below names the reference it follows; three are dataset config keys
(``DenseConventions``; every dense dataset takes them): ``upsample_align_corners``,
``metric_aggregation`` and ``miou_classes``.

Shapes and upsampling. ``pred`` is what a head outputs, ``[B, C, h, w]`` at the backbone's
resolution; targets are at the label resolution ``[H, W]``. When ``(h, w) != (H, W)`` every
loss and metric first upsamples ``pred`` bilinearly to ``(H, W)`` (once per task per
evaluation batch), by default with ``align_corners=True``: LibMTL's NYUv2 pipeline
(``examples/nyu/main.py``, ``process_preds``) and MTAN's ResNet models
(``im2im_pred/model_resnet_mtan/resnet_mtan.py``) upsample this way.
``upsample_align_corners=false`` gives PyTorch's default (``align_corners=False``, what
mtlbench did before). Metrics are always computed at the label resolution.

Masks. ``mask`` is a per-SAMPLE bool ``[B]`` (or None). Pixels of unlabelled samples count
for neither losses nor metrics. Every loss is a mean over the valid pixels of the batch
(pixel-weighted, not a mean of per-image means); a batch with no valid pixel gives an
exact 0 that is still attached to ``pred``'s graph (``backward`` works, gradients are 0).

Aggregation over a split (``metric_aggregation``). ``pixel`` (default): every metric pools
all valid pixels of the split, as LibMTL does (its depth metric weights each batch's mean
by the batch's valid-pixel count, its normal metric concatenates all angles). ``batch``:
MTAN's ``multi_task_trainer`` (``im2im_pred/utils.py``): depth, normal and L1 metrics are
computed per evaluation batch and averaged with equal weight per batch, so the median is a
mean of per-batch medians; it depends on ``trainer.eval_batch_size`` (MTAN evaluates in
batches of 2). A batch without a valid pixel is skipped (in MTAN it would make the value
NaN). Segmentation is pooled in both modes (MTAN's current ``ConfMatrix`` is pooled too).
Metrics accumulate on the device (no host sync in ``update``); ``compute()`` reads once.

* ``SegmentationTask``: loss = pixel-wise cross-entropy over pixels whose label is not
  ``ignore_index`` (MTAN / LibMTL / AdaShare). One confusion matrix over the split
  (pred = arg-max of the upsampled logits; pixels labelled ``ignore_index`` or outside
  ``[0, num_classes)`` skipped); IoU_c = TP_c / (TP_c + FP_c + FN_c); ``pixel_acc`` =
  correct / valid pixels. ``miou_classes`` says which classes mIoU averages:
  ``union`` (default): classes with a non-zero union over the split (a class absent from
  both labels and predictions is left out; one predicted but never labelled counts with
  IoU 0). ``all``: every class, as LibMTL (``examples/nyu/utils.py``, ``SegMetric``) and
  MTAN (``im2im_pred/utils.py``, ``ConfMatrix``): NaN as soon as one class has a zero
  union. ``true_positive``: classes with at least one true positive, as AdaShare
  (``test.py``, ``eval_fix_policy``). Why ``union`` by default: on the full NYUv2 /
  Cityscapes test sets every class occurs and ``union`` equals the references' ``all``;
  on small splits (``dataset.limit``, CPU-sized runs, the embedded data) a class can be
  absent, and the references' NaN would void the table and Δ_T, so mtlbench leaves out
  only classes nobody predicted or labelled; AdaShare's rule also drops classes that are
  labelled but never hit, which rewards missing a class entirely. Fractions in [0, 1].
* ``DepthTask``: valid pixels are ``target > 0`` (the references test ``!= 0``; depth
  labels are never negative). Loss = L1 over valid pixels (MTAN / LibMTL). ``abs_err`` =
  mean |pred - gt|, ``rel_err`` = mean |pred - gt| / gt (lower is better). With
  ``deltas=True`` also ``delta1..3`` = % of valid pixels with max(pred/gt, gt/pred) <
  1.25**k (Eigen et al. 2014), higher is better; pred clamped to >= 1e-6 in the ratio.
  Off by default so NYUv2 tables match MTAN's (abs, rel).
* ``NormalTask``: valid pixels follow the references' rule (LibMTL / MTAN:
  ``torch.sum(gt, dim=1) != 0``): a label normal whose components sum to zero is invalid
  (all-zero labels, but also e.g. (1, -1, 0)/sqrt(2)); non-finite labels too. Loss = mean
  over valid pixels of 1 - (p / |p|) . t (MTAN / LibMTL's normal loss; labels are unit
  normals). Metrics in degrees over valid pixels: ``mean_angle``, ``median_angle`` (lower
  is better), ``within_11.25``, ``within_22.5``, ``within_30`` = % of pixels with angle
  < t (the references report fractions; higher is better). The angle is
  atan2(|p x t|, p . t) of the unnormalised vectors: the references' acos(clamp(p . t))
  for unit vectors, accurate near 0 and 180 degrees; a zero-length prediction counts as
  90. ``pixel`` median: from a histogram of 0.01-degree bins over [0, 180] on the device,
  reported at the bin centre, so within 0.005 degrees of the exact median (LibMTL's
  ``np.median`` of all angles); ``batch`` median: exact per batch, then averaged.
* ``L1Task`` (Taskonomy edges / keypoints, as AdaShare): loss = mean absolute error over the
  elements whose target is not ``ignore_value`` (all elements when None; NaN allowed);
  metric ``l1`` = the same, lower is better.

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
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.core.tasks import GroupMetric, Metric, MetricGroup, Task
from mtlbench.tasks.dense_metrics import (AGGREGATIONS, ANGLE_BIN_DEG, DELTA_BASE, MIOU_CLASSES,  # noqa: F401
                                          DepthMetrics, L1Metrics, NormalMetrics, SegMetrics, as_map,
                                          depth_terms, l1_terms, masked_mean, normal_angles, normal_cos_loss,
                                          normal_terms, resize_to, with_mask)


@dataclass(frozen=True)
class DenseConventions:
    """The dataset keys ``upsample_align_corners``, ``metric_aggregation``, ``miou_classes``
    (see the module docstring); checked here, one line naming the key on bad values."""

    upsample_align_corners: bool = True
    metric_aggregation: str = "pixel"
    miou_classes: str = "union"

    def __post_init__(self):
        if not isinstance(self.upsample_align_corners, bool):
            raise ValueError(f"dataset.upsample_align_corners must be true or false "
                             f"(got {self.upsample_align_corners!r})")
        if self.metric_aggregation not in AGGREGATIONS:
            raise ValueError(f"dataset.metric_aggregation must be one of {', '.join(AGGREGATIONS)} "
                             f"(got {self.metric_aggregation!r})")
        if self.miou_classes not in MIOU_CLASSES:
            raise ValueError(f"dataset.miou_classes must be one of {', '.join(MIOU_CLASSES)} "
                             f"(got {self.miou_classes!r})")


DEFAULT_CONVENTIONS = DenseConventions()


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
    """Base of the dense tasks: ``out_channels`` output maps from a conv or ASPP head; its
    metrics are one ``metric_group()`` per evaluation (``metrics()``: views of it)."""

    kind = "dense"
    out_channels = 1

    def __init__(self, name: str, conventions: Optional[DenseConventions] = None):
        super().__init__(name)
        self.conventions = conventions or DEFAULT_CONVENTIONS

    @property
    def align_corners(self) -> bool:
        return self.conventions.upsample_align_corners

    def make_head(self, in_channels, **options):
        return make_dense_head(in_channels, self.out_channels, **options)

    def metrics(self) -> List[Metric]:
        return [GroupMetric(self.metric_group(), n) for n in self.metric_group().names]

    def _resized(self, pred, target):
        target = as_map(target, pred)
        return resize_to(pred, target, self.align_corners), target

    def eval_update(self, group: MetricGroup, pred, target, mask=None) -> torch.Tensor:
        """One upsampling shared by the loss and the metrics."""
        pred, target = self._resized(pred, target)
        group.add(pred, target, mask)
        return self.loss(pred, target, mask)


class SegmentationTask(DenseTask):
    kind = "segmentation"

    def __init__(self, name: str = "seg", num_classes: Optional[int] = None, ignore_index: int = -1,
                 conventions: Optional[DenseConventions] = None):
        super().__init__(name, conventions)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"SegmentationTask '{name}' needs num_classes >= 2 (got {num_classes!r})")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.out_channels = self.num_classes

    def loss(self, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        valid = with_mask(target != self.ignore_index, mask)
        tgt = target.masked_fill(~valid, self.ignore_index)
        ce = F.cross_entropy(pred, tgt, ignore_index=self.ignore_index, reduction="none")
        return masked_mean(torch.where(valid, ce, 0.0), valid)

    def metric_group(self) -> SegMetrics:
        return SegMetrics(self.num_classes, self.ignore_index, self.align_corners, self.conventions.miou_classes)


class DepthTask(DenseTask):
    kind = "depth"
    out_channels = 1

    def __init__(self, name: str = "depth", deltas: bool = False, conventions: Optional[DenseConventions] = None):
        super().__init__(name, conventions)
        self.deltas = bool(deltas)

    def loss(self, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        am, _, valid = depth_terms(pred, target, mask)
        return masked_mean(am, valid)

    def eval_update(self, group, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        terms = depth_terms(pred, target, mask)
        group.add(pred, target, mask, terms)
        return masked_mean(terms[0], terms[2])

    def metric_group(self) -> DepthMetrics:
        return DepthMetrics(self.deltas, self.align_corners, self.conventions.metric_aggregation)


class NormalTask(DenseTask):
    kind = "normal"
    out_channels = 3

    def __init__(self, name: str = "normal", conventions: Optional[DenseConventions] = None):
        super().__init__(name, conventions)

    def loss(self, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        dot, sq, _, valid = normal_terms(pred, target, mask)
        return normal_cos_loss(dot, sq, valid)

    def eval_update(self, group, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        terms = normal_terms(pred, target, mask)
        group.add(pred, target, mask, terms)
        return normal_cos_loss(terms[0], terms[1], terms[3])

    def metric_group(self) -> NormalMetrics:
        return NormalMetrics(self.align_corners, self.conventions.metric_aggregation)


class L1Task(DenseTask):
    """Dense L1 regression (Taskonomy edges / keypoints)."""

    kind = "l1"

    def __init__(self, name: str, channels: int = 1, ignore_value: Optional[float] = None,
                 conventions: Optional[DenseConventions] = None):
        super().__init__(name, conventions)
        self.out_channels = int(channels)
        self.ignore_value = ignore_value

    def _valid(self, target):
        v = self.ignore_value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ~torch.isnan(target)
        return (target != v) & ~torch.isnan(target)

    def loss(self, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        am, valid = l1_terms(pred, target, mask, self._valid)
        return masked_mean(am, valid)

    def eval_update(self, group, pred, target, mask=None):
        pred, target = self._resized(pred, target)
        terms = l1_terms(pred, target, mask, self._valid)
        group.add(pred, target, mask, terms)
        return masked_mean(*terms)

    def metric_group(self) -> L1Metrics:
        return L1Metrics(self._valid, self.align_corners, self.conventions.metric_aggregation)
