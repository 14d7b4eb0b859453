"""Half-size single-task networks for the ``standley`` procedure, sized by measured cost.

Standley et al. (ICML 2020) price a half-size single-task network at 0.5 of a full one. Their
half networks (tstandley/taskgrouping ``model_definitions/xception_taskonomy_new.py``,
``xception_taskonomy_new_half``: encoder sizes [24, 48, 96, 192, 512, ...] instead of [32, 64,
128, 256, 728, ...]) scale the ENCODER widths by about 0.70-0.75 and keep the decoder
(``final_conv`` to 512 channels and the task decoders are the same). Halving every width, heads
included (``width // 2``), costs a quarter, not a half.

Here: the backbone's ``width`` is scaled (starting from round(0.71 x width)) and moved one step
at a time while that brings the measured forward FLOPs of the single-task network
(``count_flops``, one sample at the dataset's input shape) closer to 0.5 of the full
network's; the head is kept (when the backbone has a ``head_channels`` option left at its
default, it is pinned to the full network's head width, so only the head's input shrinks).
The half network must land within 0.5 ± ``TOLERANCE`` (= 0.45..0.55) of the full cost, else a
one-line error names the closest width and ratio. The measured ratio is recorded in the
grouping outputs (``half_networks``); the selection keeps the paper's price 0.5.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from mtlbench.core.model import count_flops

TARGET, TOLERANCE, ENCODER_SCALE = 0.5, 0.05, 0.71


def _head_width(model) -> Optional[int]:
    heads = getattr(model, "heads", None)
    convs = [m for m in heads.modules() if isinstance(m, nn.Conv2d)] if heads is not None else []
    return int(convs[0].out_channels) if convs else None


def half_backbone(build: Callable[[dict], object], bnode: dict, input_shape) -> Tuple[dict, Dict[str, object]]:
    """(the half network's backbone node, {width, full_width, flops, full_flops, cost_ratio}).
    ``build(backbone_node)`` returns the single-task model on that backbone."""
    width = bnode.get("width")
    if not isinstance(width, int) or width < 2:
        raise ValueError(f"grouping.half_singles needs a backbone with an integer width >= 2 "
                         f"(backbone '{bnode.get('name')}' has {width!r}); set grouping.half_singles=false")
    full_model = build(dict(bnode))
    full = count_flops(full_model, input_shape)["total"]
    pin = {}
    if "head_channels" in bnode and bnode["head_channels"] is None and _head_width(full_model) is not None:
        pin["head_channels"] = _head_width(full_model)
    cache: Dict[int, int] = {}

    def ratio(w: int) -> float:
        if w not in cache:
            torch.manual_seed(0)
            cache[w] = count_flops(build({**bnode, "width": w, **pin}), input_shape)["total"]
        return cache[w] / full

    w = min(width - 1, max(1, int(round(ENCODER_SCALE * width))))
    step = 1 if ratio(w) < TARGET else -1
    while 1 <= w + step < width and abs(ratio(w + step) - TARGET) < abs(ratio(w) - TARGET):
        w += step
    r = ratio(w)
    if abs(r - TARGET) > TOLERANCE:
        raise ValueError(f"grouping.half_singles: no backbone.width gives half the FLOPs of width {width} "
                         f"(closest: width {w}, {r:.3f} of the full cost); use a wider backbone or set "
                         f"grouping.half_singles=false")
    return {**bnode, "width": w, **pin}, {"width": w, "full_width": width, "flops": cache[w], "full_flops": full,
                                          "cost_ratio": round(r, 4), **pin}
