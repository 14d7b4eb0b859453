"""Backbones in plain torch: a stem plus an ordered list of blocks.

Every block declares ``in_channels``, ``out_channels``, ``stride`` and ``residual``;
residual blocks also expose ``shortcut(x)`` (identity, or the downsampling projection
when stride or width changes) so that methods operating on blocks (AdaShare's
select/skip, cross-stitch units, MTAN attention) can be written once for every
backbone. A block's ``forward(x, state)`` may read and write ``state`` (a dict
carried through one forward pass, e.g. SegNet's pooling indices).

Parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layerK.i.conv1``,
``downsample.0``...) so ImageNet weights load by name.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from mtlbench.core.registry import BACKBONES


class Block(nn.Module):
    residual = False

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x, state: Optional[dict] = None):  # pragma: no cover - abstract
        raise NotImplementedError


class ResidualBlock(Block):
    """out = relu(body(x) + shortcut(x)); subclasses define ``body``."""

    residual = True

    def body(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x, state=None):
        return torch.relu(self.body(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """ResNet basic block (two 3x3 convs), torchvision parameter names."""

    def __init__(self, in_channels, out_channels, stride=1, dilation=1):
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def body(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class MLPBlock(ResidualBlock):
    """Pre-activation-free residual MLP block: x + fc2(relu(fc1(x)))."""

    def __init__(self, in_features, out_features, hidden=None, dropout=0.0):
        super().__init__(in_features, out_features, 1)
        hidden = hidden or out_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.downsample = None if in_features == out_features else nn.Linear(in_features, out_features, bias=False)

    def body(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class Backbone(nn.Module):
    """``stem`` then ``blocks`` in order; ``out_channels`` feeds the task heads."""

    def __init__(self, stem: nn.Module, blocks: Sequence[Block], name: str = "backbone",
                 head_options: Optional[dict] = None):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.name = name
        self.head_options = dict(head_options or {})

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels

    def begin(self, x):
        """(stem output, the per-forward ``state`` dict the blocks read and write): an empty
        state for tensor inputs; a graph backbone puts the graph's edges there. Architectures
        that run the blocks themselves (cross-stitch) start a column with it."""
        return self.stem(x), {}

    def forward(self, x):
        x, state = self.begin(x)
        for block in self.blocks:
            x = block(x, state)
        return x


def image_backbone(fn):
    """Marks a backbone builder that needs image inputs [C, H, W] (``build_backbone`` says so
    in one line instead of a convolution's error deep inside)."""
    fn.input_ndim = 3
    return fn


def _stages(widths: Sequence[int], depths: Sequence[int], in_ch: int) -> List[Block]:
    blocks: List[Block] = []
    for stage, (w, d) in enumerate(zip(widths, depths)):
        for i in range(d):
            stride = 2 if (i == 0 and stage > 0) else 1
            blocks.append(BasicBlock(in_ch, w, stride))
            in_ch = w
    return blocks


@BACKBONES.register("small_cnn")
@image_backbone
def small_cnn(input_shape: Tuple[int, ...], width: int = 16, depths: Sequence[int] = (1, 1, 1),
              stem_stride: int = 1) -> Backbone:
    """A small ResNet for CPU-sized image runs: conv stem (``stem_stride`` 2 halves the
    resolution of every stage: about 4x fewer FLOPs), then stages of basic blocks with
    widths width, 2*width, 4*width (stride 2 between stages)."""
    c = input_shape[0]
    stem = nn.Sequential(nn.Conv2d(c, width, 3, int(stem_stride), 1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))
    widths = [width * 2 ** i for i in range(len(depths))]
    return Backbone(stem, _stages(widths, depths, width), name="small_cnn")


@BACKBONES.register("mlp")
def mlp(input_shape: Tuple[int, ...], width: int = 64, depth: int = 2, dropout: float = 0.0) -> Backbone:
    """Residual MLP for feature vectors: linear stem, ``depth`` residual MLP blocks."""
    d_in = 1
    for s in input_shape:
        d_in *= s
    stem = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width), nn.ReLU(inplace=True))
    return Backbone(stem, [MLPBlock(width, width, dropout=dropout) for _ in range(depth)], name="mlp")


def graph_backbone(fn):
    """Marks a backbone builder that needs graph inputs (a dataset whose ``input_shape`` is a
    ``GraphShape``); it is called with that GraphShape."""
    fn.input_kind = "graph"
    return fn


def build_backbone(cfg: dict, input_shape) -> Backbone:
    """Build from a backbone config node: ``name`` plus the builder's keyword arguments."""
    from mtlbench.core.graphs import GraphShape

    kw = dict(cfg)
    name = kw.pop("name")
    builder = BACKBONES.get(name)
    graphs = isinstance(input_shape, GraphShape)
    if graphs or getattr(builder, "input_kind", None) == "graph":
        fits = ", ".join(n for n in BACKBONES.names() if (getattr(BACKBONES.get(n), "input_kind", None) == "graph")
                         == graphs)
        if not graphs:
            raise ValueError(f"backbone {name} needs graph inputs (e.g. dataset=qm9) but the dataset gives inputs of "
                             f"shape {tuple(input_shape)}: set backbone= one of {fits}")
        if getattr(builder, "input_kind", None) != "graph":
            raise ValueError(f"backbone {name} cannot read graphs, and the dataset gives graphs ({input_shape}): "
                             f"set backbone= one of {fits}")
        return builder(input_shape, **kw)
    need = getattr(builder, "input_ndim", None)
    if need is not None and len(tuple(input_shape)) != need:
        fits = ", ".join(n for n in BACKBONES.names() if getattr(BACKBONES.get(n), "input_ndim", None) is None)
        raise ValueError(f"backbone {name} needs image inputs [C, H, W] but the dataset gives inputs of shape "
                         f"{tuple(input_shape)}: set backbone={fits.split(', ')[0] if fits else '...'} (or one of "
                         f"{fits}); a dataset's YAML picks its default with `defaults: - override /backbone: <name>`")
    return builder(tuple(input_shape), **kw)
