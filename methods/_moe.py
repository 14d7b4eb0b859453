"""Building blocks shared by the mixture-of-experts architectures (``mmoe``, ``cgc``, ``ple``,
``dselect_k``): where the experts sit on a backbone, what an expert is, softmax gates, the
per-epoch gate statistics. Not a registered method (the leading underscore).

Where the experts sit (``expert_blocks``, every MoE arch):

* an int k (default 1): the backbone's stem and its first L − k blocks form a **shared
  trunk** run once per forward; the experts act on the trunk's output. Each expert is a
  fresh copy of the last k blocks (``backbone_fn()`` is called once per expert and its last
  k blocks are kept: independent initialisations). On ``mlp`` / ``resmlp`` those blocks are
  residual MLP blocks, so the experts are MLPs. PLE splits the k blocks into its ``layers``
  consecutive groups, one per extraction layer (LibMTL's PLE uses the ResNet stages the same
  way). A deviation from LibMTL, which has no trunk: it keeps n experts at a fraction of n
  full networks' cost and gives image gates features to read rather than raw pixels;
* ``all``: no trunk; each expert is a full backbone copy (stem included) on the input:
  LibMTL's form (``encoder_class()`` per expert, gates on the flattened input) and the MMoE
  paper's (experts on x).

What an expert is (``expert_hidden``): null (default) = copies of the backbone blocks above;
a list of widths = a declared MLP expert ``Linear -> ReLU`` per width on the flattened trunk
output (with ``expert_blocks: all``: on the input, the MMoE paper's one-layer experts); the
blocks they replace are then not built. Feature-vector backbones only (one line otherwise).

Gates (``gate_pool``): a gate reads the features its experts read (the trunk output, or the
input with ``expert_blocks: all``, or the previous extraction layer's output in PLE):
feature vectors flattened, as LibMTL and the papers (softmax(W x)); feature maps average-
pooled to ``gate_pool`` x ``gate_pool`` cells and flattened (default 1: global average
pooling). LibMTL flattens the whole image (a gate of C·H·W·E weights); ``gate_pool`` = the
image size reproduces that for square inputs.

Gate statistics: in training forward passes each gate adds its batch's weights to device
buffers (no host sync); ``epoch_stats()`` returns ``{"gates": {gate: {expert: mean weight}}}``
over the epoch's training samples and resets them (logged under ``arch`` in metrics.jsonl,
plotted by ``report`` as ``gate_weights``). A run resumed mid-epoch starts that epoch's
statistics afresh.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.segnet import SegNetDecoderBlock, SegNetEncoderBlock

VECTOR_BACKBONES = "mlp, resmlp"


def refuse_graphs(backbone, arch: str) -> None:
    """A graph backbone (``mpnn``) works on per-node features below its readout and carries
    the edges in a per-forward state its own ``begin`` builds: its blocks cannot be copied
    into experts / columns fed by a gate or another column. One line, naming the backbone."""
    from mtlbench.backbones.base import Backbone

    if type(backbone).begin is not Backbone.begin:
        raise ValueError(f"arch {arch} cannot split backbone '{getattr(backbone, 'name', '?')}' (a graph backbone: "
                         f"node-level blocks, edges in its own state); use arch=hard_sharing or independent")


def input_kind(backbone, arch: str) -> Tuple[bool, int]:
    """(image input?, input channels or features) from the backbone's first weight layer."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return True, m.in_channels
        if isinstance(m, nn.Linear):
            return False, m.in_features
    raise ValueError(f"{arch}: backbone '{getattr(backbone, 'name', '?')}' has no Conv2d / Linear layer to "
                     f"read its input size from")


def parse_expert_blocks(value, n_blocks: int, arch: str, name: str) -> Optional[int]:
    """None for ``all``, else k in 1..n_blocks."""
    if value in ("all", None):
        return None
    try:
        k = int(value)
        ok = k == value and 1 <= k <= n_blocks
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"arch.expert_blocks must be 'all' or an int in 1..{n_blocks} (backbone '{name}' has "
                         f"{n_blocks} blocks), got {value!r} ({arch})")
    return k


def group_sizes(n: int, groups: int) -> List[int]:
    """n consecutive items in ``groups`` nearly equal groups, the first ones larger."""
    q, r = divmod(n, groups)
    return [q + (1 if g < r else 0) for g in range(groups)]


class Trunk(nn.Module):
    """The backbone's stem and first blocks, shared below the experts; ``forward(x) -> (h,
    state)`` (SegNet's pooling indices travel in ``state``). Without a stem: the input."""

    def __init__(self, stem: Optional[nn.Module], blocks: Sequence[nn.Module]):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        state: dict = {}
        if self.stem is None:
            return x, state
        h = self.stem(x)
        for b in self.blocks:
            h = b(h, state)
        return h, state


class BlockExpert(nn.Module):
    """A copy of consecutive backbone blocks (and the stem for a full-backbone expert); runs
    with its own copy of the trunk's state."""

    def __init__(self, stem: Optional[nn.Module], blocks: Sequence[nn.Module]):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h, state: dict):
        st = dict(state)
        if self.stem is not None:
            h = self.stem(h)
        for b in self.blocks:
            h = b(h, st)
        return h


class MLPExpert(nn.Module):
    """``Linear -> ReLU`` per width on the flattened input."""

    def __init__(self, in_features: int, widths: Sequence[int]):
        super().__init__()
        layers: List[nn.Module] = [nn.Flatten()]
        for w in widths:
            layers += [nn.Linear(in_features, int(w)), nn.ReLU(inplace=True)]
            in_features = int(w)
        self.net = nn.Sequential(*layers)

    def forward(self, h, state: dict):
        return self.net(h)


def gate_features(h: torch.Tensor, pool: int) -> torch.Tensor:
    """What a gate reads: vectors flattened, maps pooled to pool x pool then flattened."""
    if h.dim() > 2:
        h = F.adaptive_avg_pool2d(h, pool)
    return h.flatten(1)


class SoftmaxGate(nn.Module):
    """g(h) = softmax(W gate_features(h) + b): one weight per expert, each row sums to 1."""

    def __init__(self, in_features: int, n_experts: int, pool: int = 1):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(in_features, n_experts)

    def forward(self, h):
        return torch.softmax(self.linear(gate_features(h, self.pool)), dim=-1)


def mix(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_e weights[b, e] · stacked[e, b, ...] (experts' outputs stacked on dim 0)."""
    return torch.einsum("eb...,be->b...", stacked, weights.to(stacked.dtype))


class GateStats(nn.Module):
    """Per gate, the sum of its weights over the epoch's training samples (device buffers,
    not checkpointed) and the sample count."""

    def __init__(self, gates: Dict[str, List[str]]):
        super().__init__()
        self.names = {g: list(experts) for g, experts in gates.items()}
        self.index = {g: i for i, g in enumerate(gates)}
        for g, i in self.index.items():
            self.register_buffer(f"sum{i}", torch.zeros(len(self.names[g])), persistent=False)
        self.register_buffer("count", torch.zeros(len(gates)), persistent=False)

    def add(self, gate: str, weights: torch.Tensor) -> None:
        i = self.index[gate]
        w = weights.detach().float()
        getattr(self, f"sum{i}").add_(w.sum(0))
        self.count[i] += w.shape[0]

    def pop(self) -> Optional[dict]:
        counts = self.count.tolist()
        if not any(counts):
            return None
        out = {}
        for g, i in self.index.items():
            if counts[i]:
                means = (getattr(self, f"sum{i}") / counts[i]).tolist()
                out[g] = {e: round(v, 6) for e, v in zip(self.names[g], means)}
            getattr(self, f"sum{i}").zero_()
        self.count.zero_()
        return {"gates": out}


class ExpertFactory:
    """Builds the trunk and the experts of one MoE architecture from ``backbone_fn``.

    ``groups``: extraction layers (PLE; 1 otherwise): the expert blocks are split into that
    many consecutive groups. ``make(g)`` builds one expert of group g; ``in_dim[g]`` /
    ``out_dim[g]`` are the channels (features) group g reads / returns; ``gate_in[g]`` the
    features its gates read."""

    def __init__(self, backbone_fn, arch: str, expert_blocks=1, expert_hidden=None, groups: int = 1,
                 gate_pool: int = 1):
        self.backbone_fn, self.arch = backbone_fn, arch
        first = backbone_fn()
        refuse_graphs(first, arch)
        self.name = getattr(first, "name", "backbone")
        self.head_options = dict(getattr(first, "head_options", None) or {})
        self.image, c_in = input_kind(first, arch)
        blocks = list(first.blocks)
        L = len(blocks)
        self.k = parse_expert_blocks(expert_blocks, L, arch, self.name)
        self.hidden = None if expert_hidden is None else [int(w) for w in expert_hidden]
        if int(gate_pool) < 1:
            raise ValueError(f"arch.gate_pool must be a positive integer, got {gate_pool!r} ({arch})")
        self.gate_pool = int(gate_pool)
        if self.hidden is not None and (self.image or not self.hidden or min(self.hidden) < 1):
            raise ValueError(f"{arch}: expert_hidden (declared MLP experts) needs a feature-vector backbone "
                             f"({VECTOR_BACKBONES}) and positive widths; backbone '{self.name}' "
                             f"{'gives feature maps' if self.image else 'got ' + repr(expert_hidden)}: "
                             f"set expert_hidden: null (experts = copies of the backbone's blocks)")
        start = 0 if self.k is None else L - self.k
        self.trunk = Trunk(None, []) if self.k is None else Trunk(first.stem, blocks[:start])
        trunk_out = c_in if self.k is None else (blocks[start - 1].out_channels if start else blocks[0].in_channels)
        if self.hidden is not None:
            self.in_dim = [trunk_out] + [self.hidden[-1]] * (groups - 1)
            self.out_dim = [self.hidden[-1]] * groups
            self.indices: List[List[int]] = []
        else:
            n = L - start
            if groups > n:
                raise ValueError(f"{arch}: {groups} extraction layers need at least {groups} expert blocks; backbone "
                                 f"'{self.name}' gives {n} (expert_blocks={expert_blocks}): raise expert_blocks")
            sizes, self.indices, at = group_sizes(n, groups), [], start
            for s in sizes:
                self.indices.append(list(range(at, at + s)))
                at += s
            self._check_state(blocks)
            self.in_dim = [trunk_out] + [blocks[g[-1]].out_channels for g in self.indices[:-1]]
            self.out_dim = [blocks[g[-1]].out_channels for g in self.indices]
        pool_in = (lambda c: c * self.gate_pool ** 2) if self.image else (lambda c: c)
        # a gate on the raw input of a vector backbone reads every input feature
        self.gate_in = [pool_in(c) for c in self.in_dim]

    def _check_state(self, blocks) -> None:
        """SegNet: a decoder block needs the pooling indices of its encoder level, so an
        encoder block in one extraction layer cannot feed a decoder block of a later one."""
        for g, idx in enumerate(self.indices):
            levels = {blocks[i].level for i in idx if isinstance(blocks[i], SegNetEncoderBlock)}
            later = {blocks[i].level for h in self.indices[g + 1:] for i in h
                     if isinstance(blocks[i], SegNetDecoderBlock)}
            if levels & later:
                raise ValueError(f"{self.arch}: backbone '{self.name}' would split a SegNet encoder level and its "
                                 f"decoder across extraction layers (pooling indices cannot be mixed): lower "
                                 f"expert_blocks so the encoder stays in the trunk")

    def make(self, g: int = 0) -> nn.Module:
        if self.hidden is not None:
            return MLPExpert(self.in_dim[g], self.hidden)
        fresh = self.backbone_fn()
        stem = fresh.stem if (self.k is None and g == 0) else None
        return BlockExpert(stem, [fresh.blocks[i] for i in self.indices[g]])

    def gate(self, g: int, n_experts: int) -> SoftmaxGate:
        return SoftmaxGate(self.gate_in[g], n_experts, self.gate_pool)

    def heads(self, tasks) -> nn.ModuleDict:
        return nn.ModuleDict({t.name: t.make_head(self.out_dim[-1], **self.head_options) for t in tasks})


def positive(value, key: str, arch: str, minimum: int = 1) -> int:
    try:
        v = int(value)
        ok = v == value and v >= minimum and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"arch.{key} must be an integer >= {minimum} ({arch}), got {value!r}")
    return v


def params(*modules) -> List[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters()]


class ExtractionLayer(nn.Module):
    """One CGC / PLE extraction layer (Tang et al., RecSys 2020, Sec. 4.2-4.3): shared experts on
    the shared input, each task's experts on that task's input, per task a softmax gate over
    [shared experts, its own experts] reading the task's input; with ``shared_gate`` also a
    gate over ALL experts of the layer reading the shared input, whose mixture is the shared
    input of the next layer (PLE's layers before the last)."""

    def __init__(self, f: ExpertFactory, g: int, task_names: Sequence[str], n_shared: int, n_task: int,
                 shared_gate: bool):
        super().__init__()
        self.task_names = list(task_names)
        self.shared = nn.ModuleList(f.make(g) for _ in range(n_shared))
        self.own = nn.ModuleDict({t: nn.ModuleList(f.make(g) for _ in range(n_task)) for t in self.task_names})
        self.gates = nn.ModuleDict({t: f.gate(g, n_shared + n_task) for t in self.task_names})
        self.shared_gate = f.gate(g, n_shared + n_task * len(self.task_names)) if shared_gate else None

    def expert_names(self, gate: str) -> List[str]:
        shared = [f"s{i}" for i in range(len(self.shared))]
        tasks = self.task_names if gate == "shared" else [gate]
        return shared + [f"{t}{i}" for t in tasks for i in range(len(self.own[t]))]

    def forward(self, h_shared, h_task: Dict[str, torch.Tensor], state: dict, tasks: Sequence[str],
                record=None):
        """(the next shared input or None, {task: output} for ``tasks``); ``record(gate,
        weights)`` is called for every gate computed."""
        s_out = [e(h_shared, state) for e in self.shared]
        need = self.task_names if self.shared_gate is not None else list(tasks)
        own = {t: [e(h_task[t], state) for e in self.own[t]] for t in need}
        out = {}
        for t in tasks:
            w = self.gates[t](h_task[t])
            if record is not None:
                record(t, w)
            out[t] = mix(torch.stack(s_out + own[t]), w)
        nxt = None
        if self.shared_gate is not None:
            w = self.shared_gate(h_shared)
            if record is not None:
                record("shared", w)
            nxt = mix(torch.stack(s_out + [o for t in self.task_names for o in own[t]]), w)
        return nxt, out
