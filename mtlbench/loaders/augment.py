"""Per-sample transforms for dense-prediction datasets: resize, random scale-crop, flip.

A sample is ``(x [C,H,W] float, {task: target})``; ``kinds`` says how each target
behaves under a geometric transform:

``label``      int64 [H,W] class map: nearest neighbour, values kept (ignore = -1 kept).
``depth``      float [1,H,W] metric depth, 0 = invalid: zooming in by ``s`` divides it by ``s``.
``disparity``  float [1,H,W], 0 = invalid: zooming in by ``s`` multiplies it by ``s``
               (disparity is inverse depth; MTAN's RandomScaleCrop divides Cityscapes'
               disparity like depth, which is the wrong direction - see cityscapes.py).
``depth_code`` float [1,H,W], 0 = invalid, an encoded depth (Taskonomy's log depth): its
               values are left unchanged by scaling, as AdaShare's Taskonomy loader does.
``normal``     float [3,H,W] unit vectors, all-zero = invalid: a horizontal flip negates
               the x component (channel 0); resizing renormalises.
``dense``      float [C,H,W] any other map (edges, keypoints); an optional ignore value
               (``ignore_values[task]``) marks invalid pixels and is preserved.

``resize_sample`` (the datasets' ``resize`` option): bilinear with antialiasing for the
image and continuous targets, nearest for labels. Continuous targets are resized as a
normalised masked average (invalid pixels do not bleed into valid ones); an output pixel
is valid when at least half of its interpolation weight comes from valid pixels.

``Augmenter`` (train split only) follows MTAN / LibMTL's ``RandomScaleCrop`` (credited there
to Jialong Wu, lorenmt/mtan issue 34) and their NYUv2 flip: pick a scale ``s`` from
``scales`` (default 1.0, 1.2, 1.5), crop an ``H/s x W/s`` window at a random position and
resize it back to ``H x W`` (image and normals bilinear with align_corners=True, labels and
depth nearest; depth divided by ``s``), then flip horizontally with probability 1/2.
All randomness comes from torch's RNG (``torch.randint`` / ``torch.rand``), so the
DataLoader's seeded worker generators make it reproducible.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

KINDS = ("label", "depth", "disparity", "depth_code", "normal", "dense")
_DEPTHS = ("depth", "disparity", "depth_code")

Sample = Tuple[torch.Tensor, Dict[str, torch.Tensor]]


def _check_kinds(kinds: Mapping[str, str]) -> None:
    bad = {t: k for t, k in kinds.items() if k not in KINDS}
    if bad:
        raise ValueError(f"unknown target kind(s) {bad}; kinds: {', '.join(KINDS)}")


def valid_mask(t: torch.Tensor, kind: str, ignore_value: Optional[float] = None) -> torch.Tensor:
    """[H,W] bool: the pixels of a continuous target that carry a label."""
    if kind in _DEPTHS:
        return t[0] > 0
    if kind == "normal":
        return (t != 0).any(dim=0)
    ok = ~torch.isnan(t).any(dim=0)
    return ok & (t != ignore_value).all(dim=0) if ignore_value is not None else ok


def _fill(kind: str, ignore_value: Optional[float]) -> float:
    return float(ignore_value) if (kind == "dense" and ignore_value is not None) else 0.0


def _masked_resize(t: torch.Tensor, valid: torch.Tensor, size, fill: float, align_corners=False,
                   antialias=True) -> torch.Tensor:
    """Resize [C,H,W] ``t`` as a normalised average over its ``valid`` pixels."""
    w = valid.to(t.dtype)[None, None]
    kw = dict(mode="bilinear", align_corners=align_corners, antialias=antialias)
    num = F.interpolate((t * w[0])[None], size=size, **kw)[0]
    den = F.interpolate(w, size=size, **kw)[0]
    out = num / den.clamp_min(1e-6)
    ok = den[0] >= 0.5
    return torch.where(ok[None], out, torch.full_like(out, fill)), ok


def _renormalise(n: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    norm = n.norm(dim=0, keepdim=True)
    ok = ok & (norm[0] > 1e-6)
    return torch.where(ok[None], n / norm.clamp_min(1e-6), torch.zeros_like(n))


def _resize_target(t: torch.Tensor, kind: str, size, ignore_value=None, align_corners=False,
                   antialias=True, mode_label="nearest") -> torch.Tensor:
    if kind == "label":
        return F.interpolate(t[None, None].float(), size=size, mode=mode_label)[0, 0].to(t.dtype)
    valid = valid_mask(t, kind, ignore_value)
    if kind == "dense" and ignore_value is None:
        return F.interpolate(t[None], size=size, mode="bilinear", align_corners=align_corners,
                             antialias=antialias)[0]
    out, ok = _masked_resize(t, valid, size, _fill(kind, ignore_value), align_corners, antialias)
    return _renormalise(out, ok) if kind == "normal" else out


def resize_sample(x: torch.Tensor, targets: Dict[str, torch.Tensor], kinds: Mapping[str, str],
                  size: Sequence[int], ignore_values: Optional[Mapping[str, float]] = None) -> Sample:
    """Resize a sample to ``size`` = (H, W) (see the module docstring for the rules)."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x, targets
    iv = ignore_values or {}
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x, {k: _resize_target(v, kinds[k], size, iv.get(k)) for k, v in targets.items()}


def scale_crop(x: torch.Tensor, targets: Dict[str, torch.Tensor], kinds: Mapping[str, str],
               scale: float, top: int, left: int,
               ignore_values: Optional[Mapping[str, float]] = None) -> Sample:
    """Crop the ``int(H/scale) x int(W/scale)`` window at (top, left) and resize it back
    to H x W (MTAN's RandomScaleCrop with a given scale and position)."""
    H, W = x.shape[-2:]
    h, w = int(H / scale), int(W / scale)
    if (h, w) == (H, W):
        return x, targets
    sl = (..., slice(top, top + h), slice(left, left + w))
    x = F.interpolate(x[sl][None], size=(H, W), mode="bilinear", align_corners=True)[0]
    out = {}
    for k, t in targets.items():
        kind = kinds[k]
        c = t[sl]
        if kind == "normal":
            r = _resize_target(c, kind, (H, W), align_corners=True, antialias=False)
        elif kind == "label":
            r = _resize_target(c, kind, (H, W))
        else:  # depth-like and dense maps: nearest, as MTAN does for depth
            r = F.interpolate(c[None], size=(H, W), mode="nearest")[0]
        if kind == "depth":
            r = r / scale
        elif kind == "disparity":
            r = r * scale
        out[k] = r
    return x, out


def hflip(x: torch.Tensor, targets: Dict[str, torch.Tensor], kinds: Mapping[str, str]) -> Sample:
    """Mirror left-right; normals get their x component (channel 0) negated."""
    out = {}
    for k, t in targets.items():
        f = t.flip(-1)
        if kinds[k] == "normal":
            f = torch.cat([-f[:1], f[1:]], dim=0)
        out[k] = f
    return x.flip(-1), out


class Augmenter:
    """Random scale-crop then random horizontal flip (train split only), torch RNG only."""

    def __init__(self, kinds: Mapping[str, str], scales: Sequence[float] = (1.0, 1.2, 1.5),
                 flip: bool = True, ignore_values: Optional[Mapping[str, float]] = None):
        _check_kinds(kinds)
        scales = [float(s) for s in (scales or [1.0])]
        if any(s < 1.0 for s in scales):
            raise ValueError(f"augmentation scales must be >= 1 (zoom in), got {scales}")
        self.kinds, self.scales, self.flip = dict(kinds), scales, bool(flip)
        self.ignore_values = dict(ignore_values or {})

    def __call__(self, x: torch.Tensor, targets: Dict[str, torch.Tensor]) -> Sample:
        H, W = x.shape[-2:]
        s = self.scales[int(torch.randint(len(self.scales), (1,)))]
        h, w = int(H / s), int(W / s)
        top = int(torch.randint(H - h + 1, (1,)))
        left = int(torch.randint(W - w + 1, (1,)))
        x, targets = scale_crop(x, targets, self.kinds, s, top, left, self.ignore_values)
        if self.flip and bool(torch.rand(()) < 0.5):
            x, targets = hflip(x, targets, self.kinds)
        return x, targets

    def __repr__(self) -> str:
        return f"Augmenter(scales={self.scales}, flip={self.flip})"
