"""``mpnn``: the message-passing network of Gilmer et al. ("Neural Message Passing for
Quantum Chemistry", ICML 2017) in the form the QM9 multi-task papers train: PyTorch
Geometric's ``examples/qm9_nn_conv.py`` as modified by Nash-MTL (Navon et al., ICML 2022;
reference file AvivNavon/nash-mtl ``experiments/quantum_chemistry/models.py``, also
LibMTL's ``examples/qm9``, FAMO's ``experiments/quantum_chemistry``).

Network (``width`` = 64, the reference's ``dim``):

* stem: h⁰ = ReLU(Linear(node_features → width)(x))  (the reference's ``lin0``);
* ``steps`` = 3 message-passing steps, each a block: m = ReLU(NNConv(h, edges)),
  h ← GRU(m, h). NNConv (the edge network of Gilmer et al., ``torch_geometric.nn.NNConv``):
  out_i = mean_{j→i} h_j · W(e_ji) + h_i · Θ + b, with W(e) = reshape(MLP(e)) ∈ R^{width×width},
  MLP = Linear(edge_in → 128) → ReLU → Linear(128 → width²), aggregation ``mean``. As in the
  reference the three steps share ONE NNConv and ONE GRU (weight tying; ``tied: false`` gives
  each step its own). ``EdgeNetwork`` computes exactly NNConv's output (tested against
  ``torch_geometric.nn.NNConv`` with the same weights; parameter names ``nn.*``, ``lin.weight``,
  ``bias`` as NNConv's), but computes W(e) once per forward and reuses it in the tied steps
  (the reference recomputes it in each of the 3 calls: same values, 3x the dominant cost);
* readout block: Set2Set(width, processing_steps=3) (``torch_geometric.nn.aggr.Set2Set``)
  → Linear(2·width → width) → ReLU (the reference's ``set2set`` + ``lin1``): one vector per
  graph. Task heads (a Linear per task for QM9's regression tasks) read it: hard sharing is
  the reference's shared trunk + ``head_i``, and the readout output is its representation.

Edges (``edges``):

* ``complete`` (the published protocol, the reference's ``Complete()`` + ``T.Distance(
  norm=False)`` transform): every ordered pair of distinct atoms of a molecule, edge features
  = the bond type one-hot where bonded (zeros otherwise) + the Euclidean distance in Å; built
  per batch on the device from the bonds and positions (no dense per-molecule storage);
* ``bond`` (cheaper, for CPU runs): only the bonds, both directions; + the distance when
  ``distance: true`` (default). The edge network's input is ``edge_features + distance``.

Sharing declared for architectures: every block is non-residual (a GRU step is a gated
update, not body + shortcut, and the readout maps atoms to molecules), so AdaShare refuses
this backbone in one line; ``stage_depths`` = one stage per step + the readout, on which MTAN
refuses in one line (its attention masks are built for feature maps / vectors of one sample,
not for per-atom features pooled by Set2Set). Cross-stitch works: a unit mixes the columns'
per-atom features after each step (channels on dim 1) and the molecule vectors after the
readout. ``begin(graphs)`` puts the edges into the per-forward ``state`` each block reads.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.base import Backbone, Block, graph_backbone
from mtlbench.core.graphs import GraphBatch, GraphShape, require_extra
from mtlbench.core.registry import BACKBONES

EDGES = ("bond", "complete")


def complete_edges(g: GraphBatch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(edge_index [2, E], bond features [E, B]) of the complete graph of each molecule: every
    ordered pair (i, j), i != j, source i, target j, in the reference's order (i-major); the
    bond one-hot where (i, j) is a bond, zeros elsewhere."""
    n = g.ptr.diff()
    sizes = n * n
    total = int(sizes.sum())
    gid = torch.repeat_interleave(torch.arange(len(n), device=n.device), sizes, output_size=total)
    block = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])[:-1]
    k = torch.arange(total, device=n.device) - block[gid]
    i, j = k // n[gid], k % n[gid]
    attr = g.edge_attr.new_zeros(total, g.edge_attr.shape[1])
    src, dst = g.edge_index
    bgid = g.batch[src]
    attr[block[bgid] + (src - g.ptr[bgid]) * n[bgid] + (dst - g.ptr[bgid])] = g.edge_attr
    keep = i != j
    start = g.ptr[:-1][gid]
    return torch.stack([(start + i)[keep], (start + j)[keep]]), attr[keep]


class EdgeNetwork(nn.Module):
    """NNConv (edge-conditioned convolution, mean aggregation) with W(e) computed by
    ``weights(edge_attr)`` so that tied steps reuse it."""

    def __init__(self, width: int, edge_in: int, hidden: int = 128):
        super().__init__()
        self.width = width
        self.nn = nn.Sequential(nn.Linear(edge_in, hidden), nn.ReLU(), nn.Linear(hidden, width * width))
        self.lin = nn.Linear(width, width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))
        bound = 1.0 / math.sqrt(width)  # NNConv's root weight: uniform(±1/sqrt(in)); bias zeros
        nn.init.uniform_(self.lin.weight, -bound, bound)

    def weights(self, edge_attr: torch.Tensor) -> torch.Tensor:
        return self.nn(edge_attr).view(-1, self.width, self.width)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        msg = torch.bmm(h[src].unsqueeze(1), w).squeeze(1)
        agg = h.new_zeros(h.shape).index_add_(0, dst, msg)
        deg = torch.bincount(dst, minlength=h.shape[0]).clamp_min(1).to(h.dtype)
        return agg / deg.unsqueeze(1) + self.lin(h) + self.bias


class MessagePassingStep(Block):
    """m = ReLU(conv(h)); h <- GRU(m, h). ``conv`` / ``gru`` may be shared by several steps."""

    def __init__(self, conv: EdgeNetwork, gru: nn.GRUCell):
        super().__init__(conv.width, conv.width, 1)
        self.conv, self.gru = conv, gru

    def forward(self, h, state: Optional[dict] = None):
        cache = state.setdefault("edge_weights", {})
        w = cache.get(id(self.conv))
        if w is None:
            w = cache[id(self.conv)] = self.conv.weights(state["edge_attr"])
        m = F.relu(self.conv(h, state["edge_index"], w))
        return self.gru(m, h)


class Set2SetReadout(Block):
    """One vector per graph: ReLU(Linear(Set2Set(h))) (2·width -> width)."""

    def __init__(self, width: int, processing_steps: int = 3):
        super().__init__(width, width, 1)
        from torch_geometric.nn.aggr import Set2Set

        self.set2set = Set2Set(width, processing_steps=processing_steps)
        self.lin = nn.Linear(2 * width, width)

    def forward(self, h, state: Optional[dict] = None):
        pooled = self.set2set(h, state["batch"], dim_size=state["num_graphs"])
        return F.relu(self.lin(pooled))


class GraphBackbone(Backbone):
    """Stem on node features, then blocks reading the edges from the per-forward state."""

    def __init__(self, stem, blocks, edges: str, distance: bool, name: str = "mpnn"):
        super().__init__(stem, blocks, name=name)
        self.edges, self.distance = edges, bool(distance)
        self.stage_depths = [1] * len(blocks)

    def begin(self, x: GraphBatch):
        if self.edges == "complete":
            edge_index, attr = complete_edges(x)
        else:
            edge_index, attr = x.edge_index, x.edge_attr
        if self.distance:
            attr = torch.cat([attr, (x.pos[edge_index[0]] - x.pos[edge_index[1]]).norm(dim=-1, keepdim=True)], 1)
        state = {"edge_index": edge_index, "edge_attr": attr, "batch": x.batch, "num_graphs": x.num_graphs}
        return self.stem(x.x), state


@BACKBONES.register("mpnn")
@graph_backbone
def mpnn(input_shape: GraphShape, width: int = 64, steps: int = 3, edges: str = "bond", distance: bool = True,
         edge_hidden: int = 128, set2set_steps: int = 3, tied: bool = True) -> Backbone:
    """Gilmer et al.'s MPNN (see the module docstring); ``edges`` bond | complete."""
    require_extra({"torch_geometric": "torch-geometric"}, "backbone mpnn")
    if edges not in EDGES:
        raise ValueError(f"backbone.edges must be one of {', '.join(EDGES)} (got {edges!r})")
    if int(steps) < 1:
        raise ValueError(f"backbone.steps must be >= 1 (got {steps})")
    shape = GraphShape(*input_shape)
    edge_in = shape.edge_features + (1 if distance else 0)
    stem = nn.Sequential(nn.Linear(shape.node_features, width), nn.ReLU())

    def step_parts():
        return EdgeNetwork(width, edge_in, edge_hidden), nn.GRUCell(width, width)

    shared = step_parts() if tied else None
    blocks = [MessagePassingStep(*(shared or step_parts())) for _ in range(int(steps))]
    return GraphBackbone(stem, blocks + [Set2SetReadout(width, set2set_steps)], edges, distance)
