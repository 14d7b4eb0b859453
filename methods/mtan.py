"""MTAN: Multi-Task Attention Network (Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019; reference code github.com/lorenmt/mtan, ``model_segnet_mtan.py``
and ``model_resnet_mtan/resnet_mtan.py``; LibMTL's ``architecture/MTAN.py``).

One shared backbone (run once per forward) plus, per task, one soft-attention module per
backbone STAGE; each task head reads its task's attended features of the last stage.

Stages (``stages`` option):

* ``auto`` (default): a backbone with ``stage_depths`` (the ResNet family: small_resnet,
  resnet18/34, any output stride) -> its layer groups; otherwise a new stage starts at
  every block that changes resolution or width (stride != 1, ``upsample``, in != out
  channels), so SegNet's 5 encoder and 5 decoder blocks are 10 stages, small_cnn's
  stages of basic blocks are its width groups (one block each with the default depths)
  and a residual MLP's equal-width blocks form one stage;
* ``block``: every block is its own stage.

Per stage s the shared network exposes intermediate features ``u^s`` and the stage output
``f^s`` (the features the mask multiplies):

* a stage of n >= 2 blocks (MTAN's ResNet code): u = output of blocks 1..n-1, f = output of
  block n (which must keep the resolution);
* a single ResNet BasicBlock: u = relu(bn1(conv1(x))), the block's first conv, f = the block
  output; a single residual MLP block: u = relu(fc1(x)), f = the block output;
* a SegNet encoder block (MTAN's SegNet code): u = its first conv-BN-ReLU layer's output,
  f = its last conv layer's output BEFORE the 2x2 max-pool (the pooled map goes on to the next
  shared block, the pooling indices into the forward's one ``state`` dict);
* a SegNet decoder block (MTAN's SegNet code): u = the max-unpooled block input (as the
  reference code, which reads the unpooled map rather than a conv output), f = the block output.

For task t: ``a_t^1 = g_t^1(u^1)``, ``a_t^s = g_t^s([u^s, q_t^s])`` (channel concat) with
``q_t^s = proj^s(p_t^{s-1})``; ``p_t^s = a_t^s * f^s``; the head of t reads ``p_t^S``.
``g`` = 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid (hidden width = f's channels;
convs with bias as the reference code); masks are per channel and pixel, in (0, 1).
``proj^s`` brings p^{s-1} to f^s's channel count and u^s's resolution: a stride-1 ResNet
BasicBlock (1x1 projection shortcut when widths differ; MTAN's ResNet code uses a residual
block) for residual conv backbones, 3x3 conv -> BN -> ReLU for SegNet (MTAN's SegNet code),
then a max-pool to u^s's size when it is smaller (adaptive: exact 2x2 pooling for halved
sizes); when u^s is larger (the decoder) p is bilinearly upsampled (align_corners=True)
BEFORE the projection, as the reference code. As in the reference code the projections are
shared by all tasks (``share_projections: false`` gives each task its own) and the masks
``g_t^s`` are task-specific. SegNet, encoder -> decoder: as the reference code (its
``encoder_block_att[4]`` then ``decoder_block_att[4]``), the encoder's last attended map is
projected twice: 3x3 conv -> BN -> ReLU (f -> f channels), 2x2 max-pool, bilinear upsampling
(align_corners=True) back to the first decoder stage's u, 3x3 conv -> BN -> ReLU (a
``SegNetBridge``). So ``arch=mtan backbone=segnet`` (width 64, ``head=mtan``) on NYUv2's
3 tasks (13 classes) has 44,229,073 parameters: the reference model's 44,229,076 less its 3
uncertainty-weighting log-variances (``logsigma``, held here by the ``uw`` balancer), 1.77x
its single-task SegNet (24,981,069), the ratio of the MTAN paper's table.

Feature vectors (residual MLP backbone): the same with linear layers (g = Linear -> ReLU ->
Linear -> sigmoid, proj = Linear -> ReLU; no BatchNorm so batches of one sample train).

``shared_parameters()``: the backbone plus the shared projections (used by every task);
``task_parameters(t)``: those plus t's masks and head. MTAN has no shared representation
in the sense of the model contract (a tensor every shared parameter reaches the outputs
through): each stage's masks read that stage's shared features, so the shared trunk's
output f^S carries only part of the shared gradient; representation-based balancers (MGDA-UB)
therefore use the shared parameters on MTAN (exact, one gradient per task).
``forward_tasks(x, tasks, return_masks=True)`` also returns ``{task: [a^1, ..., a^S]}``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.base import BasicBlock, MLPBlock
from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS
from mtlbench.backbones.segnet import SegNetDecoderBlock, SegNetEncoderBlock
from mtlbench.backbones.segnet import pool_key as segnet_pool_key

STAGE_RULES = ("auto", "block")
_SEGNET = (SegNetEncoderBlock, SegNetDecoderBlock)
SUPPORTED = ("small_cnn, small_resnet, resnet18/34 (BasicBlock ResNets), segnet, mlp; any "
             "backbone whose stages are single BasicBlock / MLPBlock / SegNet blocks, or groups "
             "of >= 2 blocks whose last block keeps the resolution")


def stage_groups(backbone, rule: str = "auto") -> List[List[int]]:
    """Indices of the backbone's blocks in each stage (see the module docstring)."""
    n = len(backbone.blocks)
    if rule not in STAGE_RULES:
        raise ValueError(f"mtan: stages must be one of {', '.join(STAGE_RULES)}, got {rule!r}")
    if rule == "block":
        return [[i] for i in range(n)]
    depths = getattr(backbone, "stage_depths", None)
    if depths is not None:
        depths = [int(d) for d in depths]
        if sum(depths) != n or min(depths) < 1:
            raise ValueError(f"mtan: backbone stage_depths {depths} do not cover its {n} blocks")
        starts = [sum(depths[:k]) for k in range(len(depths))]
        return [list(range(s, s + d)) for s, d in zip(starts, depths)]
    groups: List[List[int]] = []
    for i, b in enumerate(backbone.blocks):
        new = (not groups or isinstance(b, _SEGNET) or b.stride != 1 or b.in_channels != b.out_channels
               or getattr(b, "upsample", 1) != 1)
        if new:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _stage_kind(blocks, name: str):
    """(kind, u channels, f channels) of one stage."""
    last = blocks[-1]
    if len(blocks) >= 2:
        if isinstance(last, _SEGNET) or last.stride != 1 or getattr(last, "upsample", 1) != 1:
            raise ValueError(f"mtan: the last block of a multi-block stage must keep the resolution "
                             f"(backbone '{name}'); try stages=block. Supported: {SUPPORTED}")
        return "group", blocks[-2].out_channels, last.out_channels
    if isinstance(last, BasicBlock):
        return "basic", last.conv1.out_channels, last.out_channels
    if isinstance(last, MLPBlock):
        return "mlp", last.fc1.out_features, last.out_channels
    if isinstance(last, SegNetEncoderBlock):
        return "segnet_enc", last.convs[0].out_channels, last.out_channels
    if isinstance(last, SegNetDecoderBlock):
        return "segnet_dec", last.in_channels, last.out_channels
    raise ValueError(f"mtan: cannot attend over a single {type(last).__name__} stage of backbone "
                     f"'{name}'. Supported: {SUPPORTED}")


def _mask_layer(c_in: int, c_hidden: int, c_out: int, linear: bool) -> nn.Module:
    if linear:
        return nn.Sequential(nn.Linear(c_in, c_hidden), nn.ReLU(inplace=True),
                             nn.Linear(c_hidden, c_out), nn.Sigmoid())
    return nn.Sequential(nn.Conv2d(c_in, c_hidden, 1), nn.BatchNorm2d(c_hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(c_hidden, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid())


class SegNetBridge(nn.Module):
    """The projection between SegNet's last encoder stage and its first decoder stage
    (lorenmt/mtan ``model_segnet_mtan.py``: ``encoder_block_att[4]``, the 2x2 max-pool, the
    x2 bilinear upsampling, ``decoder_block_att[4]``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.enc = _projection(c_in, c_in, "conv")
        self.dec = _projection(c_in, c_out, "conv")

    def forward(self, p, size):
        x = F.max_pool2d(self.enc(p), 2, 2)
        return self.dec(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True))


def _projection(c_in: int, c_out: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU(inplace=True))
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    return BasicBlock(c_in, c_out, 1)


@ARCHS.register("mtan")
class MTAN(MTLModel):
    """Shared backbone + per-task attention modules per stage (see the module docstring)."""

    def __init__(self, backbone_fn, tasks, stages: str = "auto", share_projections: bool = True):
        super().__init__(tasks)
        self.backbone = backbone_fn()
        name = getattr(self.backbone, "name", "backbone")
        self.stages = stage_groups(self.backbone, stages)
        blocks = list(self.backbone.blocks)
        specs = [_stage_kind([blocks[i] for i in g], name) for g in self.stages]
        self.stage_kinds = [k for k, _, _ in specs]
        linear = {k == "mlp" or (k == "group" and isinstance(blocks[g[-1]], MLPBlock))
                  for k, g in zip(self.stage_kinds, self.stages)}
        if len(linear) != 1:
            raise ValueError(f"mtan: backbone '{name}' mixes feature-vector and feature-map stages")
        self.linear = linear.pop()
        proj_kind = "linear" if self.linear else ("conv" if any(isinstance(b, _SEGNET) for b in blocks) else "block")
        self.share_projections = bool(share_projections)

        def masks():
            return nn.ModuleList(_mask_layer(cu if s == 0 else cu + cf, cf, cf, self.linear)
                                 for s, (_, cu, cf) in enumerate(specs))

        def projection(s: int) -> nn.Module:
            if self.stage_kinds[s - 1] == "segnet_enc" and self.stage_kinds[s] == "segnet_dec":
                return SegNetBridge(specs[s - 1][2], specs[s][2])
            return _projection(specs[s - 1][2], specs[s][2], proj_kind)

        def projections():
            return nn.ModuleList(projection(s) for s in range(1, len(specs)))

        self.attention = nn.ModuleDict({t: masks() for t in self.task_names})
        if self.share_projections:
            self.projections = projections()
        else:
            self.projections = nn.ModuleDict({t: projections() for t in self.task_names})
        self.heads = make_heads(self.backbone, tasks)

    # ------------------------------------------------------------------ shared network
    def _run_stage(self, s: int, x, state: dict):
        """(u, f, output for the next stage) of stage ``s``; the shared forward."""
        kind, blocks = self.stage_kinds[s], [self.backbone.blocks[i] for i in self.stages[s]]
        b = blocks[-1]
        if kind == "group":
            for blk in blocks[:-1]:
                x = blk(x, state)
            f = b(x, state)
            return x, f, f
        if kind == "basic":
            u = torch.relu(b.bn1(b.conv1(x)))
            f = torch.relu(b.bn2(b.conv2(u)) + b.shortcut(x))
            return u, f, f
        if kind == "mlp":
            u = torch.relu(b.fc1(x))
            f = torch.relu(b.fc2(b.drop(u)) + b.shortcut(x))
            return u, f, f
        if kind == "segnet_enc":
            u = b.convs[:3](x)
            f = b.convs[3:](u)
            out, indices = F.max_pool2d(f, 2, 2, return_indices=True)
            state[segnet_pool_key(b.level)] = (indices, f.shape[-2:])
            return u, f, out
        # segnet_dec
        key = segnet_pool_key(b.level)
        if key not in state:
            raise RuntimeError(f"mtan: SegNet decoder level {b.level} runs before its encoder level")
        indices, size = state[key]
        u = F.max_unpool2d(x, indices, 2, 2, output_size=size)
        f = b.convs(u)
        return u, f, f

    def shared_features(self, x) -> List[tuple]:
        """[(u^s, f^s)] of every stage, from one run of the shared backbone (one state dict)."""
        state: dict = {}
        x = self.backbone.stem(x)
        taps = []
        for s in range(len(self.stages)):
            u, f, x = self._run_stage(s, x, state)
            taps.append((u, f))
        return taps

    # ------------------------------------------------------------------ attention branches
    def _project(self, proj: nn.Module, p, u):
        if isinstance(proj, SegNetBridge):
            return proj(p, u.shape[-2:])
        if self.linear or p.shape[-2:] == u.shape[-2:]:
            return proj(p)
        size = tuple(u.shape[-2:])
        if p.shape[-2] >= size[0] and p.shape[-1] >= size[1]:
            return F.adaptive_max_pool2d(proj(p), size)
        return proj(F.interpolate(p, size=size, mode="bilinear", align_corners=True))

    def _branch(self, task: str, taps):
        projs = self.projections if self.share_projections else self.projections[task]
        masks, p = [], None
        for s, (u, f) in enumerate(taps):
            inp = u if s == 0 else torch.cat([u, self._project(projs[s - 1], p, u)], dim=1)
            a = self.attention[task][s](inp)
            if a.shape != f.shape:
                raise RuntimeError(f"mtan: stage {s} mask {tuple(a.shape)} does not match its features "
                                   f"{tuple(f.shape)}")
            p = a * f
            masks.append(a)
        return p, masks

    def forward_tasks(self, x, tasks: Sequence[str], return_masks: bool = False):
        """Predictions for ``tasks`` (their branches only); with ``return_masks`` also
        ``{task: [mask per stage]}`` (each in (0, 1), shaped like the stage's features)."""
        preds, _, all_masks = self._forward(x, tasks)
        return (preds, all_masks) if return_masks else preds

    def _forward(self, x, tasks):
        taps = self.shared_features(x)
        preds: Dict[str, torch.Tensor] = {}
        all_masks: Dict[str, List[torch.Tensor]] = {}
        for t in tasks:
            p, all_masks[t] = self._branch(t, taps)
            preds[t] = self.heads[t](p)
        return preds, taps, all_masks

    # ------------------------------------------------------------------ parameters
    def _projection_parameters(self, task: Optional[str]) -> List[nn.Parameter]:
        if self.share_projections:
            return list(self.projections.parameters())
        return [] if task is None else list(self.projections[task].parameters())

    def shared_parameters(self):
        return list(self.backbone.parameters()) + self._projection_parameters(None)

    def task_parameters(self, task):
        return (list(self.backbone.parameters()) + self._projection_parameters(task)
                + list(self.attention[task].parameters()) + list(self.heads[task].parameters()))

    def last_shared_parameters(self):
        return list(self.backbone.blocks[-1].parameters())

    def parameter_groups(self):
        groups = {"backbone": list(self.backbone.parameters())}
        if self.share_projections:
            groups["projections"] = list(self.projections.parameters())
        for t in self.task_names:
            if not self.share_projections:
                groups[f"projections:{t}"] = list(self.projections[t].parameters())
            groups[f"attention:{t}"] = list(self.attention[t].parameters())
            groups[f"head:{t}"] = list(self.heads[t].parameters())
        return {k: v for k, v in groups.items() if v}
