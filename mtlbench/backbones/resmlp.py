"""Residual MLP backbone for feature-vector (tabular) data: ``backbone=resmlp``.

Structure (a ResNet for vectors, after Gorishniy et al., "Revisiting Deep Learning Models
for Tabular Data", NeurIPS 2021, adapted to mtlbench's block contract):

* stem: ``Flatten -> Linear(d_in, width) -> norm -> ReLU``;
* ``depth`` residual blocks (``widths`` may give one width per block instead); block k is

      out = relu(body(x) + shortcut(x)),   body(x) = fc2(drop(relu(fc1(x))))

  where ``fc1`` / ``fc2`` are ``Linear -> norm`` (:class:`NormLinear`) and ``shortcut`` is
  the identity, or a ``Linear -> norm`` projection (no bias) when the width changes: the
  post-activation form of a ResNet basic block, the ``ResidualBlock`` contract of
  ``mtlbench.backbones.base`` (``residual=True``, ``shortcut(x)``), so AdaShare's select/skip
  (skip = the shortcut alone), cross-stitch units and MTAN attention apply unchanged.
  Gorishniy et al. use pre-norm without the final ReLU; the contract's post-activation is
  kept here so that every block-level method treats conv and MLP blocks alike.

``ResMLPBlock`` is an ``MLPBlock`` (same ``fc1`` / ``drop`` / ``fc2`` / ``downsample``
attributes, ``fc1.out_features`` the hidden width), so MTAN's feature-vector stages
(u = relu(fc1(x)), f = the block output) read it exactly as the block computes it: the norm
lives inside ``fc1`` / ``fc2``.

Options: ``width`` (64), ``depth`` (2), ``widths`` (per-block widths; overrides width/depth),
``hidden_factor`` (hidden width = round(factor * block width), 1.0), ``dropout`` (0.0,
between fc1 and fc2), ``norm`` (``layer`` (default: per-sample, so no statistic mixes the samples of different
tasks, e.g. in STL on one-sample-one-task data) | ``batch`` (Gorishniy et al.) | ``none``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import nn

from mtlbench.backbones.base import Backbone, MLPBlock
from mtlbench.core.registry import BACKBONES

NORMS = ("batch", "layer", "none")


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"resmlp: norm must be one of {', '.join(NORMS)} (got {kind!r})")


class NormLinear(nn.Linear):
    """``norm(Linear(x))``: a Linear layer (``in_features`` / ``out_features`` as nn.Linear)
    followed by a normalisation of its output."""

    def __init__(self, in_features: int, out_features: int, norm: str = "layer", bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = _norm(norm, out_features)

    def forward(self, x):
        return self.norm(super().forward(x))


class ResMLPBlock(MLPBlock):
    """relu(fc2(drop(relu(fc1(x)))) + shortcut(x)) with normalised linear layers."""

    def __init__(self, in_features: int, out_features: int, hidden: Optional[int] = None,
                 dropout: float = 0.0, norm: str = "layer"):
        nn.Module.__init__(self)  # MLPBlock's own layers are replaced below
        self.in_channels, self.out_channels, self.stride = in_features, out_features, 1
        hidden = hidden or out_features
        self.fc1 = NormLinear(in_features, hidden, norm)
        self.fc2 = NormLinear(hidden, out_features, norm)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.downsample = (None if in_features == out_features
                           else NormLinear(in_features, out_features, norm, bias=False))


@BACKBONES.register("resmlp")
def resmlp(input_shape: Tuple[int, ...], width: int = 64, depth: int = 2, dropout: float = 0.0,
           norm: str = "layer", hidden_factor: float = 1.0, widths: Optional[Sequence[int]] = None) -> Backbone:
    """Residual MLP: linear stem to ``widths[0]`` (or ``width``), then one residual block per
    entry of ``widths`` (default ``[width] * depth``); see the module docstring."""
    widths = [int(w) for w in (widths if widths else [width] * int(depth))]
    if not widths or min(widths) < 1:
        raise ValueError(f"resmlp: needs at least one block of positive width (width={width}, depth={depth}, "
                         f"widths={widths})")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"resmlp: dropout must be in [0, 1) (got {dropout})")
    if float(hidden_factor) <= 0:
        raise ValueError(f"resmlp: hidden_factor must be positive (got {hidden_factor})")
    _norm(norm, 1)  # validate early
    d_in = 1
    for s in input_shape:
        d_in *= int(s)
    stem = nn.Sequential(nn.Flatten(), NormLinear(d_in, widths[0], norm), nn.ReLU(inplace=True))
    blocks, c_in = [], widths[0]
    for w in widths:
        blocks.append(ResMLPBlock(c_in, w, max(1, round(hidden_factor * w)), float(dropout), norm))
        c_in = w
    return Backbone(stem, blocks, name="resmlp")
