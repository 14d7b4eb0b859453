"""SegNet encoder-decoder backbone as used by MTAN (Liu, Johns & Davison, "End-to-End
Multi-Task Learning with Attention", CVPR 2019; their ``im2im_pred/model_segnet_*.py``),
re-implemented in plain torch.

Architecture (standard MTAN SegNet, base filters ``f = width * (1, 2, 4, 8, 8)``,
``width=64`` gives MTAN's ``[64, 128, 256, 512, 512]``):

* 5 encoder blocks; block k = conv-BN-ReLU layers (3x3, padding 1, conv bias as in MTAN)
  ``f[k-1] -> f[k]`` then ``f[k] -> f[k]``, with 2, 2, 3, 3, 3 layers for k = 0..4,
  followed by a 2x2 stride-2 max-pool WITH indices;
* 5 decoder blocks mirroring them; the decoder block for level k max-unpools with the
  level-k indices (back to the pre-pool size), then conv-BN-ReLU layers
  ``f[k] -> f[k-1]`` (``f[0] -> f[0]`` for k = 0) and ``f[k-1] -> f[k-1]``, with 3, 3,
  3, 2, 2 layers for k = 4..0.

The output has ``f[0]`` channels at the input resolution. Heads (``head``): ``mtan`` (the
default) = MTAN's prediction layers exactly (``conv_layer(..., pred=True)`` in
``model_segnet_mtan.py`` / ``model_segnet_single.py``): a 3x3 conv ``f[0] -> f[0]`` then a 1x1
conv to the task's outputs, both with bias, no normalisation or activation between them;
``conv`` = mtlbench's generic dense head (3x3 conv -> BN -> ReLU -> 1x1); ``aspp``. With the
``mtan`` head a single-task SegNet for 13-class segmentation has MTAN's 24,981,069
parameters. Initialisation as MTAN: Xavier-normal conv weights (heads included), zero
biases, BN weight 1 / bias 0.

Blocks are non-residual :class:`~mtlbench.backbones.base.Block` s. An encoder block has
``stride=2``; a decoder block has ``stride=1`` and ``upsample=2`` (it doubles the spatial
size). The pooling indices and pre-pool sizes travel through the per-forward ``state``
dict: encoder level k writes ``state["segnet_pool{k}"] = (indices, size)`` and decoder
level k reads it, so a method that runs blocks itself must give each forward (each task
column, for per-task copies) its own ``state`` and run the encoder before the decoder.
Inputs need ``H, W >= 32`` (five 2x2 poolings); odd sizes are restored exactly by
unpooling to the recorded pre-pool size.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.base import image_backbone, Backbone, Block
from mtlbench.core.registry import BACKBONES

ENCODER_LAYERS = (2, 2, 3, 3, 3)  # conv-BN-ReLU layers per encoder block, levels 0..4


def _conv_stack(in_channels: int, out_channels: int, n: int) -> nn.Sequential:
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def pool_key(level: int) -> str:
    return f"segnet_pool{level}"


class SegNetEncoderBlock(Block):
    """conv-BN-ReLU x ``n_convs`` then 2x2 max-pool; writes (indices, pre-pool size)."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, level: int):
        super().__init__(in_channels, out_channels, stride=2)
        self.level = level
        self.convs = _conv_stack(in_channels, out_channels, n_convs)

    def forward(self, x, state: Optional[dict] = None):
        x = self.convs(x)
        size = x.shape[-2:]
        x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        if state is not None:
            state[pool_key(self.level)] = (indices, size)
        return x


class SegNetDecoderBlock(Block):
    """2x2 max-unpool with level ``level``'s indices, then conv-BN-ReLU x ``n_convs``."""

    upsample = 2

    def __init__(self, in_channels: int, out_channels: int, n_convs: int, level: int):
        super().__init__(in_channels, out_channels, stride=1)
        self.level = level
        self.convs = _conv_stack(in_channels, out_channels, n_convs)

    def forward(self, x, state: Optional[dict] = None):
        if state is None or pool_key(self.level) not in state:
            raise RuntimeError(f"SegNet decoder level {self.level} needs the pooling indices of "
                               f"encoder level {self.level} in state['{pool_key(self.level)}']: run the "
                               f"encoder blocks first with the same state dict")
        indices, size = state[pool_key(self.level)]
        x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
        return self.convs(x)


def segnet_blocks(in_channels: int, filters: Sequence[int]) -> list:
    """The 10 SegNet blocks (5 encoder, 5 decoder) for 5 base filter counts."""
    f = list(filters)
    enc = [SegNetEncoderBlock(in_channels if k == 0 else f[k - 1], f[k], n, k)
           for k, n in enumerate(ENCODER_LAYERS)]
    dec = [SegNetDecoderBlock(f[k], f[max(k - 1, 0)], ENCODER_LAYERS[k], k) for k in reversed(range(5))]
    return enc + dec


@BACKBONES.register("segnet")
@image_backbone
def segnet(input_shape: Tuple[int, ...], width: int = 64, head: str = "mtan",
           head_channels: Optional[int] = None) -> Backbone:
    """MTAN's SegNet (see module docstring); ``width`` = base filters (64 as in MTAN,
    small values for CPU runs). Head options: ``head`` ("mtan": MTAN's prediction layers,
    "conv", "aspp") and ``head_channels`` (the first head conv's width) when set."""
    if int(width) != width or width < 1:
        raise ValueError(f"segnet: width must be a positive integer, got {width!r}")
    if len(input_shape) != 3 or min(input_shape[1:]) < 32:
        raise ValueError(f"segnet needs image inputs (C, H, W) with H, W >= 32 (five 2x2 poolings), "
                         f"got input shape {tuple(input_shape)}")
    width = int(width)
    backbone = Backbone(nn.Identity(), segnet_blocks(int(input_shape[0]), [width * m for m in (1, 2, 4, 8, 8)]),
                        name="segnet", head_options=_options(head, head_channels))
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    backbone.width = width
    if head == "mtan":
        backbone.head_factory = functools.partial(mtan_head, head_channels=head_channels)
    return backbone


def mtan_head(task, in_channels: int, head_channels: Optional[int] = None) -> nn.Module:
    """MTAN's SegNet prediction layer for a dense ``task``: 3x3 conv (bias) -> 1x1 conv (bias),
    Xavier-normal weights and zero biases (lorenmt/mtan ``conv_layer(pred=True)``); a task
    without output maps (classification) gets its own head, as head options are ignored there."""
    out = getattr(task, "out_channels", None)
    if out is None:
        return task.make_head(in_channels)
    hc = int(head_channels or in_channels)
    head = nn.Sequential(nn.Conv2d(in_channels, hc, 3, padding=1), nn.Conv2d(hc, int(out), 1))
    for m in head:
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)
    return head


def _options(head: str, head_channels: Optional[int]) -> dict:
    if head not in ("mtan", "conv", "aspp"):
        raise ValueError(f"segnet: head must be mtan, conv or aspp, got {head!r}")
    opts: dict = {"head": head}
    if head_channels is not None:
        opts["head_channels"] = int(head_channels)
    return opts
