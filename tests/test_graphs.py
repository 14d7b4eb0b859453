"""Graph batching (mtlbench.core.graphs) and the mpnn backbone against PyTorch Geometric's
reference layers / transforms on identical inputs."""
import pytest
import torch

from mtlbench.core.data import Batch
from mtlbench.core.graphs import GraphShape, GraphSplit, random_graphs
from mtlbench.engine.distributed import DistContext, shard

SHAPE = GraphShape(11, 4)


def _split(n=7):
    g = random_graphs(SHAPE, n, seed=3)
    eptr = g.edge_ptr
    local = g.edge_index - torch.repeat_interleave(g.ptr[:-1], eptr.diff())
    return GraphSplit(g.x, g.pos, g.ptr, local, g.edge_attr, eptr, {"t": torch.arange(n).float()},
                      ids=torch.arange(100, 100 + n))


def test_batches_gather_whole_graphs_in_pyg_layout():
    split = _split()
    b = next(iter(split.batches(3, shuffle=True, generator=torch.Generator().manual_seed(0))))
    order = split.ids[b.targets["t"].long()] - 100  # which graphs the batch holds
    assert len(b) == 3 and b.x.num_graphs == 3 and b.x.batch.tolist() == sum(
        ([k] * int(split.node_ptr[i + 1] - split.node_ptr[i]) for k, i in enumerate(order.tolist())), [])
    for k, i in enumerate(order.tolist()):  # graph k of the batch = graph i of the split, edges made global
        one = split.graphs([i])
        assert torch.equal(b.x.x[b.x.ptr[k]:b.x.ptr[k + 1]], one.x)
        assert torch.equal(b.x.edge_index[:, b.x.edge_ptr[k]:b.x.edge_ptr[k + 1]] - b.x.ptr[k], one.edge_index)
    sub = split.subset(torch.tensor([5, 1]))
    assert sub.sample_ids() == [105, 101] and torch.equal(sub.graphs([0]).x, split.graphs([5]).x)
    assert split.num_batches(3, drop_last=True) == 2 and split.num_batches(3) == 3


def test_a_graph_batch_shards_and_moves_like_a_tensor_batch():
    g = random_graphs(SHAPE, 4, seed=1)
    batch = Batch(g, {"t": torch.arange(4.0)})
    halves = [shard(batch, DistContext(rank, 2)) for rank in (0, 1)]
    for rank, h in enumerate(halves):
        ref = g[2 * rank:2 * rank + 2]
        assert len(h) == 2 and h.targets["t"].tolist() == [2.0 * rank, 2.0 * rank + 1]
        assert torch.equal(h.x.x, ref.x) and torch.equal(h.x.edge_index, ref.edge_index)
    assert torch.equal(torch.cat([halves[0].x.x, halves[1].x.x]), g.x)
    assert batch.to("cpu") is batch and batch.x.to("cpu").device.type == "cpu"


def test_edge_network_equals_pyg_nnconv():
    """Same weights, same graph: our NNConv (edge weights computed once) = torch_geometric's."""
    pyg = pytest.importorskip("torch_geometric.nn")
    from mtlbench.backbones.mpnn import EdgeNetwork

    torch.manual_seed(0)
    g = random_graphs(SHAPE, 5, seed=2)
    ours = EdgeNetwork(8, 4, 16)
    ref = pyg.NNConv(8, 8, torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 64)),
                     aggr="mean")
    ref.load_state_dict(ours.state_dict())  # parameter names are NNConv's
    h = torch.randn(g.x.shape[0], 8)
    torch.testing.assert_close(ours(h, g.edge_index, ours.weights(g.edge_attr)), ref(h, g.edge_index, g.edge_attr))


def test_complete_edges_equal_the_reference_transform():
    """Nash-MTL's Complete(): every ordered pair i != j per molecule (i-major), bond features
    scattered in, zeros elsewhere; done here per batch."""
    pytest.importorskip("torch_geometric")
    from torch_geometric.utils import remove_self_loops

    from mtlbench.backbones.mpnn import complete_edges

    g = random_graphs(SHAPE, 4, seed=5)
    edges, attrs = [], []
    for k in range(g.num_graphs):  # the reference transform, molecule by molecule
        one, n = g[k:k + 1], int(g.ptr[k + 1] - g.ptr[k])
        ei = torch.stack([torch.arange(n).view(-1, 1).repeat(1, n).view(-1), torch.arange(n).repeat(n)])
        attr = one.edge_attr.new_zeros(n * n, 4)
        attr[one.edge_index[0] * n + one.edge_index[1]] = one.edge_attr
        ei, attr = remove_self_loops(ei, attr)
        edges.append(ei + g.ptr[k])
        attrs.append(attr)
    ei, attr = complete_edges(g)
    assert torch.equal(ei, torch.cat(edges, 1)) and torch.equal(attr, torch.cat(attrs))


def test_mpnn_ties_its_steps_and_refuses_non_graph_data_in_one_line():
    pytest.importorskip("torch_geometric")
    from mtlbench.backbones import build_backbone

    tied = build_backbone({"name": "mpnn", "width": 8, "edge_hidden": 8}, SHAPE)
    untied = build_backbone({"name": "mpnn", "width": 8, "edge_hidden": 8, "tied": False}, SHAPE)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    step = n(untied.blocks[0])  # one NNConv + one GRU
    assert n(untied) - n(tied) == 2 * step and tied.blocks[0].conv is tied.blocks[2].conv
    out = tied(random_graphs(SHAPE, 3))
    assert out.shape == (3, 8)
    for cfg, shape, words in (({"name": "mpnn"}, (3, 16, 16), "needs graph inputs"),
                              ({"name": "mlp"}, SHAPE, "cannot read graphs")):
        with pytest.raises(ValueError) as err:
            build_backbone(cfg, shape)
        assert "\n" not in str(err.value) and words in str(err.value) and "backbone=" in str(err.value)
