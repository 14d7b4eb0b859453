"""ResNet-18/34 backbones (basic blocks) in plain torch, optionally dilated, with
ImageNet weights loaded from a torchvision state dict file.

Conventions (the ones torchvision's ``torchvision/models/resnet.py`` uses, re-implemented
here without importing torchvision):

* stem = ``conv1`` (7x7, stride 2, padding 3, no bias), ``bn1``, ``relu``, ``maxpool``
  (3x3, stride 2, padding 1), i.e. output stride 4 after the stem;
* four stages of :class:`mtlbench.backbones.base.BasicBlock` with ``width * (1, 2, 4, 8)``
  channels (``width=64`` is the standard ResNet) and ``layers`` blocks each
  (``[2, 2, 2, 2]`` = ResNet-18, ``[3, 4, 6, 3]`` = ResNet-34); stages 2-4 start with a
  stride-2 block; a block gets a ``downsample`` branch (1x1 conv + BN) when its stride
  or width changes;
* ``output_stride`` 32 (plain), 16 (stage 4 dilated) or 8 (stages 3 and 4 dilated), the
  DeepLab setting that AdaShare and MTAN's dilated ResNet use for dense prediction.
  A dilated stage drops its stride and multiplies the running dilation by 2, and, as
  torchvision's ``replace_stride_with_dilation`` does, its FIRST block still uses the
  previous dilation while the others use the new one (os 8: stage 3 = dilations
  1, 2, 2...; stage 4 = 2, 4, 4...);
* initialisation as torchvision: Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0.

The backbone's blocks are the flat list of all stages' blocks, so torchvision's
``layer{L}.{i}.*`` is ``blocks.{offset(L) + i}.*`` and ``conv1.* / bn1.*`` are
``stem.conv1.* / stem.bn1.*`` (see :func:`load_torchvision_resnet`).

Head options (``Backbone.head_options``, read by dense task heads, ignored by
classification heads): ``head`` ("aspp" = DeepLab-v2 ASPP, "conv" = plain conv head),
``aspp_rates``, and ``head_channels`` / ``aspp_dropout`` when set (``None`` leaves the
head's default).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from mtlbench.backbones.base import image_backbone, Backbone, BasicBlock
from mtlbench.core.registry import BACKBONES

# which of stages 2, 3, 4 trade their stride for dilation, per output stride
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
HEADS = ("aspp", "conv")


def resnet_backbone(input_shape: Sequence[int], layers: Sequence[int], name: str = "resnet",
                    output_stride: int = 8, width: int = 64,
                    head_options: Optional[dict] = None) -> Backbone:
    """A BasicBlock ResNet as a :class:`Backbone` (see the module docstring).

    The returned backbone also carries ``in_channels``, ``width``, ``stage_depths`` and
    ``output_stride`` attributes (used by :func:`load_torchvision_resnet`)."""
    if output_stride not in _DILATE:
        raise ValueError(f"{name}: output_stride must be 32, 16 or 8, got {output_stride!r}")
    if int(width) != width or width < 1:
        raise ValueError(f"{name}: width must be a positive integer, got {width!r}")
    layers = tuple(int(d) for d in layers)
    if len(layers) != 4 or min(layers) < 1:
        raise ValueError(f"{name}: layers must be 4 positive block counts, got {list(layers)}")
    width, in_ch = int(width), int(input_shape[0])
    stem = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)),
        ("bn1", nn.BatchNorm2d(width)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", nn.MaxPool2d(3, 2, 1)),
    ]))
    blocks = []
    c, dilation = width, 1
    for stage, depth in enumerate(layers):
        planes = width * 2 ** stage
        stride = 1 if stage == 0 else 2
        first_dilation = dilation
        if stage > 0 and _DILATE[output_stride][stage - 1]:
            dilation *= stride
            stride = 1
        for i in range(depth):
            blocks.append(BasicBlock(c, planes, stride if i == 0 else 1,
                                     first_dilation if i == 0 else dilation))
            c = planes
    backbone = Backbone(stem, blocks, name=name, head_options=head_options)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    backbone.in_channels, backbone.width = in_ch, width
    backbone.stage_depths, backbone.output_stride = layers, output_stride
    return backbone


def _head_options(head: str, aspp_rates, head_channels, aspp_dropout, name: str) -> dict:
    if head not in HEADS:
        raise ValueError(f"{name}: head must be one of {', '.join(HEADS)}, got {head!r}")
    opts = {"head": head, "aspp_rates": tuple(int(r) for r in aspp_rates)}
    if head_channels is not None:
        opts["head_channels"] = int(head_channels)
    if aspp_dropout is not None:
        opts["aspp_dropout"] = float(aspp_dropout)
    return opts


def _build(name, layers, input_shape, output_stride, width, pretrained, head, aspp_rates,
           head_channels, aspp_dropout) -> Backbone:
    backbone = resnet_backbone(input_shape, layers, name, output_stride, width,
                               _head_options(head, aspp_rates, head_channels, aspp_dropout, name))
    if pretrained:
        load_torchvision_resnet(backbone, pretrained)
    return backbone


@BACKBONES.register("resnet18")
@image_backbone
def resnet18(input_shape: Tuple[int, ...], output_stride: int = 8, width: int = 64,
             pretrained: Optional[str] = None, head: str = "aspp",
             aspp_rates: Sequence[int] = (6, 12, 18, 24), head_channels: Optional[int] = None,
             aspp_dropout: Optional[float] = None) -> Backbone:
    """ResNet-18 (layers 2, 2, 2, 2); ``pretrained``: path of torchvision's ImageNet
    ``resnet18`` state dict (e.g. ``resnet18-f37072fd.pth``)."""
    return _build("resnet18", (2, 2, 2, 2), input_shape, output_stride, width, pretrained,
                  head, aspp_rates, head_channels, aspp_dropout)


@BACKBONES.register("resnet34")
@image_backbone
def resnet34(input_shape: Tuple[int, ...], output_stride: int = 8, width: int = 64,
             pretrained: Optional[str] = None, head: str = "aspp",
             aspp_rates: Sequence[int] = (6, 12, 18, 24), head_channels: Optional[int] = None,
             aspp_dropout: Optional[float] = None) -> Backbone:
    """ResNet-34 (layers 3, 4, 6, 3), the AdaShare / DeepLab-ResNet34 backbone;
    ``pretrained``: path of torchvision's ImageNet ``resnet34`` state dict."""
    return _build("resnet34", (3, 4, 6, 3), input_shape, output_stride, width, pretrained,
                  head, aspp_rates, head_channels, aspp_dropout)


@BACKBONES.register("small_resnet")
@image_backbone
def small_resnet(input_shape: Tuple[int, ...], width: int = 16, layers: Sequence[int] = (1, 1, 1, 1),
                 output_stride: int = 8, head: str = "conv", aspp_rates: Sequence[int] = (6, 12, 18, 24),
                 head_channels: Optional[int] = None, aspp_dropout: Optional[float] = None) -> Backbone:
    """The same ResNet family at CPU size (default: width 16, one block per stage,
    output stride 8, conv heads), for the embedded small-image datasets."""
    return _build("small_resnet", layers, input_shape, output_stride, width, None,
                  head, aspp_rates, head_channels, aspp_dropout)


# ----------------------------------------------------------------------------------------
# torchvision ImageNet weights

_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _few(keys, n: int = 3) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _read_state_dict(path) -> Dict[str, torch.Tensor]:
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained ResNet weights not found: {path} (expected a torchvision ImageNet state "
            f"dict, e.g. resnet18-f37072fd.pth from download.pytorch.org/models/)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / format errors -> one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot read pretrained ResNet weights {path}: {type(exc).__name__}: {msg}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"pretrained ResNet weights {path} are not a state dict of tensors "
                         f"(expected torchvision's resnet .pth)")
    return sd


def _torchvision_key(key: str, offsets: Sequence[int]) -> str:
    """Our parameter name -> torchvision's (for messages)."""
    if key.startswith("stem."):
        return key[len("stem."):]
    _, j, rest = key.split(".", 2)
    stage = max(s for s in range(4) if offsets[s] <= int(j))
    return f"layer{stage + 1}.{int(j) - offsets[stage]}.{rest}"


def load_torchvision_resnet(backbone: Backbone,
                            state_dict_or_path: Union[str, os.PathLike, Dict[str, torch.Tensor]]) -> Backbone:
    """Load a torchvision ResNet state dict (or the ``.pth`` file holding one) into a
    backbone built by :func:`resnet_backbone`, in place; returns the backbone.

    Key mapping: ``conv1.* / bn1.*`` -> ``stem.conv1.* / stem.bn1.*``;
    ``layer{L}.{i}.*`` -> ``blocks.{offset(L) + i}.*`` (offset = blocks in earlier stages);
    ``fc.*`` dropped. Everything else is strict: missing keys, unexpected keys and shape
    mismatches raise one ``ValueError`` naming the first few (in torchvision's names). The only tolerated
    omission is BN ``num_batches_tracked`` (absent from torchvision's published files,
    as ``BatchNorm2d.load_state_dict`` also tolerates). ImageNet weights need
    ``in_channels=3`` and ``width=64``; other backbones fail before reading the file.
    Dilation does not change parameter shapes, so any output stride loads."""
    name = getattr(backbone, "name", "backbone")
    depths = getattr(backbone, "stage_depths", None)
    if depths is None or not all(isinstance(b, BasicBlock) for b in backbone.blocks):
        raise ValueError(f"backbone '{name}' is not a ResNet built by mtlbench.backbones.resnet; "
                         f"torchvision ResNet weights cannot be loaded into it")
    if backbone.in_channels != 3 or backbone.width != 64:
        raise ValueError(
            f"ImageNet ResNet weights need in_channels=3 and width=64, but backbone '{name}' has "
            f"in_channels={backbone.in_channels}, width={backbone.width}: set backbone.pretrained=null")
    if isinstance(state_dict_or_path, dict):
        source, sd = "the given state dict", state_dict_or_path
    else:
        source, sd = os.fspath(state_dict_or_path), _read_state_dict(state_dict_or_path)
    offsets = [sum(depths[:s]) for s in range(4)]

    mapped: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}  # our key -> the file's key, for messages
    unexpected = []
    for key, value in sd.items():
        m = _LAYER_KEY.match(key)
        if key.startswith("fc."):
            continue
        if key.startswith(("conv1.", "bn1.")):
            ours = "stem." + key
        elif m and int(m.group(2)) < depths[int(m.group(1)) - 1]:
            ours = f"blocks.{offsets[int(m.group(1)) - 1] + int(m.group(2))}.{m.group(3)}"
        else:
            unexpected.append(key)
            continue
        mapped[ours], origin[ours] = value, key
    own = backbone.state_dict()
    unexpected += [origin[k] for k in mapped if k not in own]
    missing = [_torchvision_key(k, offsets) for k in own
               if k not in mapped and not k.endswith("num_batches_tracked")]
    shapes = [f"{origin[k]} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if k in own and v.shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model): {_few(shapes)}")
    if problems:
        raise ValueError(f"pretrained weights from {source} do not fit backbone '{name}' "
                         f"(torchvision resnet with layers {list(depths)} expected): " + "; ".join(problems))
    with torch.no_grad():
        for key, value in mapped.items():
            own[key].copy_(value)
    return backbone


__all__ = ["resnet_backbone", "resnet18", "resnet34", "small_resnet", "load_torchvision_resnet"]
