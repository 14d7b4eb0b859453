"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
Multi-task Learning", CVPR 2016), for any backbone built as stem + ordered blocks.

Structure (``arch=cross_stitch``):

* one copy ("column") of the backbone per task: ``backbone_fn()`` is called T times, in
  task order, and the columns live in ``backbones[task]`` (the same layout and parameter
  names as ``arch=independent``, so weights copy between the two by name);
* a learnable cross-stitch unit after EVERY block (after the last one too, as in
  Vandenhende et al.'s Multi-Task-Learning-PyTorch, which stitches after every stage;
  LibMTL stitches only between stages) and, with ``stem_unit: true``, one after the stem as
  well (default false: the stem is then the first part of each column, unstitched).
  A unit mixes the columns' activations at that point: ``x'_i = Σ_j α_ij ⊙ x_j``;
* one head per task on its own column's last (stitched) output.

Units (``unit``):

* ``channel`` (default): ``α`` of shape ``[T, T, C]`` for a point with C channels, i.e. one
  mixing weight per (target task, source task, channel), broadcast over batch and space
  (dim 1 of the activation is the channel, for conv maps ``[B, C, H, W]`` and MLP features
  ``[B, C]`` alike). This is the channel-wise unit of Vandenhende et al.'s reimplementation;
* ``task``: one ``α`` of shape ``[T, T]`` per unit (one scalar per task pair, the 2x2 unit of
  the paper's equations, shared over all channels and positions; LibMTL does this).

Initialisation (the paper's Sec. 5 finding that a high self weight works best):
``α_ii = self_weight`` (0.9) and ``α_ij = other_weight`` for i != j, where
``other_weight`` defaults to ``(1 - self_weight) / (T - 1)`` so each row sums to 1
(0.1 for two tasks, the paper's / Vandenhende's (0.9, 0.1)). With one task the single
weight is 1. ``self_weight=1.0`` gives identity units: the model is then exactly T
independent networks until the units learn to mix.

Per-forward state: each column runs its blocks with its OWN ``state`` dict, since each
column pools its own activations (SegNet's decoder of column i unpools with the indices
of column i's encoder, applied to the stitched activations). Residual blocks need nothing
special: a unit acts on a block's output (after the skip connection and ReLU).

Parameters (what ``count_params`` reports):

* ``shared_parameters()``: every column and every unit, i.e. everything except the heads.
  Once the units mix (any ``α_ij != 0`` for i != j), every task's prediction depends on
  every column and every unit, so all of them are used by more than one task; this is
  what gradient balancers (MGDA-UB...) act on (as LibMTL, whose shared "encoder" for
  cross-stitch holds all columns and units). There is no shared representation (no
  single tensor is read by all heads); the last shared layer is the last unit.
* ``task_parameters(task)``: ALL columns + ALL units + that task's head. A deployment of a
  single task still needs every column (cross-stitch does not factor per task).
* ``params.total`` = T backbones + units + T heads.

``forward_tasks(x, tasks)``: the units mix all columns, so all columns run through all
blocks; only the last unit's rows for the requested tasks and their heads are computed.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS

UNITS = ("channel", "task")


class CrossStitchUnit(nn.Module):
    """Mixes T activations: ``out_i = Σ_j α_ij ⊙ x_j``, with ``α`` ``[T, T, C]`` (per
    channel, broadcast over dims other than 1) or ``[T, T]`` (per task pair)."""

    def __init__(self, n_tasks: int, channels: int, unit: str = "channel", self_weight: float = 0.9,
                 other_weight: Optional[float] = None):
        super().__init__()
        if unit not in UNITS:
            raise ValueError(f"cross_stitch: unit must be one of {', '.join(UNITS)}, got {unit!r}")
        self.unit, self.channels = unit, int(channels)
        alpha = init_alpha(n_tasks, self_weight, other_weight)
        if unit == "channel":
            alpha = alpha.unsqueeze(-1).repeat(1, 1, self.channels)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: Sequence[torch.Tensor], rows: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """``xs``: the T columns' activations (same shape ``[B, C, ...]``); returns the mixed
        activations for ``rows`` (target task indices; all tasks when None)."""
        alpha = self.alpha if rows is None else self.alpha[list(rows)]
        stacked = torch.stack(list(xs))  # [T, B, C, ...]
        if self.unit == "channel":
            if stacked.shape[2] != self.channels:
                raise ValueError(f"cross-stitch unit built for {self.channels} channels got an activation "
                                 f"of shape {tuple(stacked.shape[1:])} (channels on dim 1)")
            mixed = torch.einsum("ijc,jbc...->ibc...", alpha.to(stacked.dtype), stacked)
        else:
            mixed = torch.einsum("ij,j...->i...", alpha.to(stacked.dtype), stacked)
        return list(mixed.unbind(0))

    def extra_repr(self) -> str:
        return f"unit={self.unit}, alpha={tuple(self.alpha.shape)}"


def init_alpha(n_tasks: int, self_weight: float = 0.9, other_weight: Optional[float] = None) -> torch.Tensor:
    """``[T, T]``: ``self_weight`` on the diagonal, ``other_weight`` elsewhere (default
    ``(1 - self_weight) / (T - 1)``: rows sum to 1); ``[[1.0]]`` for one task."""
    if n_tasks < 1:
        raise ValueError("cross_stitch needs at least one task")
    if n_tasks == 1:
        return torch.ones(1, 1)
    off = (1.0 - float(self_weight)) / (n_tasks - 1) if other_weight is None else float(other_weight)
    alpha = torch.full((n_tasks, n_tasks), off)
    alpha.fill_diagonal_(float(self_weight))
    return alpha


@ARCHS.register("cross_stitch")
class CrossStitch(MTLModel):
    """One backbone column per task, cross-stitch units after every block (see module
    docstring). Options: ``unit`` ("channel" | "task"), ``self_weight``, ``other_weight``
    (None = spread ``1 - self_weight`` evenly), ``stem_unit`` (also stitch after the stem)."""

    def __init__(self, backbone_fn, tasks, unit: str = "channel", self_weight: float = 0.9,
                 other_weight: Optional[float] = None, stem_unit: bool = False):
        super().__init__(tasks)
        if unit not in UNITS:
            raise ValueError(f"cross_stitch: unit must be one of {', '.join(UNITS)}, got {unit!r}")
        self.unit = unit
        self.backbones = nn.ModuleDict({t.name: backbone_fn() for t in tasks})
        first = self.backbones[self.task_names[0]]
        for name in self.task_names[1:]:
            other = self.backbones[name]
            if [(b.in_channels, b.out_channels) for b in other.blocks] != \
                    [(b.in_channels, b.out_channels) for b in first.blocks]:
                raise ValueError("cross_stitch: backbone_fn() must return backbones of identical structure")
        T = len(self.task_names)

        def make_unit(channels: int) -> CrossStitchUnit:
            return CrossStitchUnit(T, channels, unit, self_weight, other_weight)

        self.stem_unit: Optional[CrossStitchUnit] = (
            make_unit(first.blocks[0].in_channels) if stem_unit else None)
        self.units = nn.ModuleList(make_unit(b.out_channels) for b in first.blocks)
        self.heads = nn.ModuleDict({t.name: make_heads(self.backbones[t.name], [t])[t.name] for t in tasks})

    def unit_modules(self) -> List[CrossStitchUnit]:
        """The cross-stitch units in forward order (stem unit first when present)."""
        return ([self.stem_unit] if self.stem_unit is not None else []) + list(self.units)

    def forward_tasks(self, x, tasks) -> Dict[str, torch.Tensor]:
        tasks = list(tasks)
        cols = [self.backbones[t] for t in self.task_names]
        starts = [col.begin(x) for col in cols]  # stem output and one per-forward state per column
        xs, states = [h for h, _ in starts], [st for _, st in starts]
        if self.stem_unit is not None:
            xs = self.stem_unit(xs)
        n_blocks = len(self.units)
        for k in range(n_blocks):
            xs = [col.blocks[k](h, s) for col, h, s in zip(cols, xs, states)]
            last = k == n_blocks - 1
            rows = [self.task_names.index(t) for t in tasks] if last else None
            xs = self.units[k](xs, rows)
        # after the last unit, xs holds the requested tasks' features, in `tasks` order
        return {t: self.heads[t](h) for t, h in zip(tasks, xs)}

    def shared_parameters(self):
        return list(self.backbones.parameters()) + [u.alpha for u in self.unit_modules()]

    def task_parameters(self, task):
        return self.shared_parameters() + list(self.heads[task].parameters())

    def last_shared_parameters(self):
        return [self.units[-1].alpha]

    def parameter_groups(self):
        return {**{f"backbone:{t}": list(b.parameters()) for t, b in self.backbones.items()},
                "units": [u.alpha for u in self.unit_modules()],
                **{f"head:{t}": list(h.parameters()) for t, h in self.heads.items()}}
