"""Graph inputs: many small graphs (molecules) batched as one disjoint union, in PyTorch
Geometric's layout, with plain torch (no torch_geometric import here).

* ``GraphShape(node_features, edge_features)``: the ``input_shape`` of a graph dataset
  (a tuple, so code that only passes shapes around keeps working; ``build_backbone``
  tells graph from tensor data by this type).
* ``GraphBatch``: ``x`` [N, F] node features, ``edge_index`` [2, E] (row 0 = source,
  row 1 = target, global node indices), ``edge_attr`` [E, B], ``pos`` [N, 3], ``batch`` [N]
  (graph of each node), ``ptr`` [G + 1] (node offsets), ``edge_ptr`` [G + 1] (edge offsets:
  the edges of a graph are contiguous). ``len()`` is the number of graphs (what
  ``Batch.__len__`` reports), ``to(device)`` moves it, ``batch[a:b]`` is graphs a..b-1 (what
  the DDP ``shard`` takes), ``device`` and ``input_shape`` describe it.
* ``GraphSplit``: a split of graphs kept as concatenated arrays; ``batches`` gathers the
  graphs of a batch by tensor indexing (no per-graph Python work, unlike
  ``torch_geometric.data.Batch.from_data_list``) with the interface of ``TensorSplit``:
  ``batches / num_batches / subset / select_tasks / sample_ids / __len__`` and
  ``example_input()`` (one graph, what ``count_flops`` runs).
"""
from __future__ import annotations

from typing import Dict, Iterator, NamedTuple, Optional, Sequence

import torch


def require_extra(packages: Dict[str, str], what: str, extra: str = "qm9") -> None:
    """One-line DataError naming the optional extra when a package of ``packages`` ({import
    name: pip name}) is not installed (graph datasets and backbones need optional packages)."""
    import importlib.util

    missing = [pip for mod, pip in packages.items() if importlib.util.find_spec(mod) is None]
    if missing:
        from mtlbench.core.data import DataError

        raise DataError(f"{what} needs {', '.join(missing)} (the optional extra '{extra}'): "
                        f"pip install -e \".[{extra}]\" (or \"mtlbench[{extra}]\")")


class GraphShape(NamedTuple):
    node_features: int
    edge_features: int


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + c) for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return starts.new_zeros(0)
    shift = torch.repeat_interleave(starts - _offsets(counts)[:-1], counts)
    return torch.arange(total, device=starts.device) + shift


class GraphBatch:
    """A disjoint union of graphs (see the module docstring)."""

    def __init__(self, x, edge_index, edge_attr, pos, ptr, edge_ptr):
        self.x, self.edge_index, self.edge_attr, self.pos = x, edge_index, edge_attr, pos
        self.ptr, self.edge_ptr = ptr, edge_ptr
        self.batch = torch.repeat_interleave(torch.arange(len(ptr) - 1, device=ptr.device), ptr.diff(),
                                             output_size=x.shape[0])

    @property
    def num_graphs(self) -> int:
        return len(self.ptr) - 1

    def __len__(self) -> int:
        return self.num_graphs

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def input_shape(self) -> GraphShape:
        return GraphShape(self.x.shape[1], self.edge_attr.shape[1])

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return GraphBatch(mv(self.x), mv(self.edge_index), mv(self.edge_attr), mv(self.pos), mv(self.ptr),
                          mv(self.edge_ptr))

    def __getitem__(self, sl: slice) -> "GraphBatch":
        """Graphs ``sl`` (a slice with step 1) as a batch of their own."""
        a, b, step = sl.indices(self.num_graphs)
        if step != 1:
            raise ValueError("a GraphBatch is sliced by contiguous ranges of graphs")
        n0, n1 = int(self.ptr[a]), int(self.ptr[b])
        e0, e1 = int(self.edge_ptr[a]), int(self.edge_ptr[b])
        return GraphBatch(self.x[n0:n1], self.edge_index[:, e0:e1] - n0, self.edge_attr[e0:e1], self.pos[n0:n1],
                          self.ptr[a:b + 1] - n0, self.edge_ptr[a:b + 1] - e0)

    def __repr__(self) -> str:
        return (f"GraphBatch(graphs={self.num_graphs}, nodes={self.x.shape[0]}, edges={self.edge_index.shape[1]}, "
                f"input_shape={tuple(self.input_shape)})")


class GraphSplit:
    """An in-memory split of graphs. Per graph g: its nodes ``x[node_ptr[g]:node_ptr[g+1]]``
    (and ``pos``), its edges ``edge_index[:, edge_ptr[g]:edge_ptr[g+1]]`` with node indices
    LOCAL to the graph, ``edge_attr`` likewise; ``targets`` {task: [G]}, optional ``masks``
    {task: [G] bool} and ``ids`` [G] (each graph's identity in its source, kept by ``subset``)."""

    def __init__(self, x, pos, node_ptr, edge_index, edge_attr, edge_ptr, targets: Dict[str, torch.Tensor],
                 masks: Optional[Dict[str, torch.Tensor]] = None, ids: Optional[torch.Tensor] = None):
        g = len(node_ptr) - 1
        if len(edge_ptr) != g + 1:
            raise ValueError(f"edge_ptr has {len(edge_ptr) - 1} graphs, node_ptr {g}")
        for k, v in list(targets.items()) + list((masks or {}).items()) + ([("ids", ids)] if ids is not None else []):
            if v.shape[0] != g:
                raise ValueError(f"task '{k}' has {v.shape[0]} rows, the split has {g} graphs")
        self.x, self.pos, self.node_ptr = x, pos, node_ptr
        self.edge_index, self.edge_attr, self.edge_ptr = edge_index, edge_attr, edge_ptr
        self.targets, self.masks, self.ids = targets, masks, ids

    def __len__(self) -> int:
        return len(self.node_ptr) - 1

    @property
    def input_shape(self) -> GraphShape:
        return GraphShape(self.x.shape[1], self.edge_attr.shape[1])

    def sample_ids(self) -> Optional[list]:
        return None if self.ids is None else self.ids.tolist()

    def _graph_parts(self, idx: torch.Tensor):
        """(node rows, node counts, edge rows, edge counts) of graphs ``idx`` in that order."""
        n_cnt = (self.node_ptr[1:] - self.node_ptr[:-1])[idx]
        e_cnt = (self.edge_ptr[1:] - self.edge_ptr[:-1])[idx]
        return _ranges(self.node_ptr[:-1][idx], n_cnt), n_cnt, _ranges(self.edge_ptr[:-1][idx], e_cnt), e_cnt

    def subset(self, idx) -> "GraphSplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        nodes, n_cnt, edges, e_cnt = self._graph_parts(idx)
        masks = None if self.masks is None else {k: v[idx] for k, v in self.masks.items()}
        return GraphSplit(self.x[nodes], self.pos[nodes], _offsets(n_cnt), self.edge_index[:, edges],
                          self.edge_attr[edges], _offsets(e_cnt), {k: v[idx] for k, v in self.targets.items()},
                          masks, None if self.ids is None else self.ids[idx])

    def select_tasks(self, names: Sequence[str]) -> "GraphSplit":
        masks = None if self.masks is None else {k: self.masks[k] for k in names}
        return GraphSplit(self.x, self.pos, self.node_ptr, self.edge_index, self.edge_attr, self.edge_ptr,
                          {k: self.targets[k] for k in names}, masks, self.ids)

    def graphs(self, idx) -> GraphBatch:
        """The graphs ``idx`` (in that order) as one GraphBatch (edge indices made global)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        nodes, n_cnt, edges, e_cnt = self._graph_parts(idx)
        ptr, eptr = _offsets(n_cnt), _offsets(e_cnt)
        shift = torch.repeat_interleave(ptr[:-1], e_cnt)
        return GraphBatch(self.x[nodes], self.edge_index[:, edges] + shift, self.edge_attr[edges], self.pos[nodes],
                          ptr, eptr)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None, drop_last: bool = False) -> Iterator:
        from mtlbench.core.data import Batch

        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if (drop_last and n >= batch_size) else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            masks = None if self.masks is None else {k: v[idx] for k, v in self.masks.items()}
            yield Batch(self.graphs(idx), {k: v[idx] for k, v in self.targets.items()}, masks)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if (drop_last and n >= batch_size) else -(-n // batch_size)

    def example_input(self) -> GraphBatch:
        """The first graph, batched (what ``count_flops`` counts one sample's forward on)."""
        return self.graphs(torch.tensor([0]))


def random_graphs(shape: GraphShape, num_graphs: int, seed: int = 0, max_nodes: int = 5) -> GraphBatch:
    """``num_graphs`` random connected graphs (a path plus random chords; 2..max_nodes nodes,
    one-hot edge types, random positions): example inputs for tests and FLOP counts."""
    g = torch.Generator().manual_seed(seed)
    xs, pos, eis, eas, n_cnt, e_cnt = [], [], [], [], [], []
    for _ in range(num_graphs):
        n = int(torch.randint(2, max_nodes + 1, (1,), generator=g))
        pairs = [(i, i + 1) for i in range(n - 1)] + [(i, j) for i in range(n) for j in range(i + 2, n)
                                                     if torch.rand((), generator=g) < 0.3]
        src = [a for a, b in pairs] + [b for a, b in pairs]
        dst = [b for a, b in pairs] + [a for a, b in pairs]
        kinds = torch.randint(0, shape.edge_features, (len(pairs),), generator=g).repeat(2)
        xs.append(torch.rand(n, shape.node_features, generator=g))
        pos.append(torch.randn(n, 3, generator=g))
        eis.append(torch.tensor([src, dst], dtype=torch.long))
        eas.append(torch.nn.functional.one_hot(kinds, shape.edge_features).float())
        n_cnt.append(n)
        e_cnt.append(len(src))
    split = GraphSplit(torch.cat(xs), torch.cat(pos), _offsets(torch.tensor(n_cnt)), torch.cat(eis, 1),
                       torch.cat(eas), _offsets(torch.tensor(e_cnt)), {})
    return split.graphs(torch.arange(num_graphs))
