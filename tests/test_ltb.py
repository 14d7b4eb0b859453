"""Learning to Branch: the tree derived from a hand-set branching-logit state, its deployed
parameters and FLOPs (hand counts), and the Gumbel-softmax search forward at that state."""
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.model import count_flops
from mtlbench.core.registry import ARCHS, load_all
from mtlbench.methods import _ltb
from mtlbench.tasks import ClassificationTask

load_all()
TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 4), ClassificationTask("c", 2)]


def model():
    torch.manual_seed(0)  # input 6 -> stem Linear(6, 8) -> two residual blocks 8 -> 8
    return ARCHS.get("ltb")(lambda: build_backbone({"name": "mlp", "width": 8, "depth": 2}, (6,)), TASKS)


def hand_state(m, gap: float = 50.0):
    """Block 0: every node reads stem 0; block 1: nodes 0 and 1 read node 0, node 2 reads node 1."""
    parents = [[0, 0, 0], [0, 0, 1]]
    with torch.no_grad():
        m.branch_logits.zero_()
        for l, row in enumerate(parents):
            for k, p in enumerate(row):
                m.branch_logits[l, k, p] = gap
    return parents


def test_derived_tree_and_deployed_parameters():
    m = model()
    parents = hand_state(m)
    assert m.argmax_tree().tolist() == parents
    m.set_tree(m.argmax_tree())
    # chains (stem, block 0, block 1): a = (0, 0, 0), b = (0, 0, 1), c = (0, 1, 2)
    assert [_ltb.chain(parents, t) for t in range(3)] == [[0, 0, 0], [0, 0, 1], [0, 1, 2]]
    assert _ltb.groups(parents, ["a", "b", "c"]) == [[["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]]
    assert _ltb.shared_levels(parents, ["a", "b", "c"]) == {"a|b": 2, "a|c": 1, "b|c": 1}
    # deployed: 1 stem (6*8+8 = 56) + 2 block-0 nodes + 3 block-1 nodes (2*(8*8+8) = 144 each)
    # + heads 8*3+3, 8*4+4, 8*2+2 = 27 + 36 + 18
    assert sum(p.numel() for p in m.deployed_parameters()) == 56 + 5 * 144 + 81 == 857
    assert sum(p.numel() for p in m.task_parameters("c")) == 56 + 2 * 144 + 18
    assert {id(p) for p in m.shared_parameters()} == {id(p) for p in list(m.stems[0].parameters())
                                                      + list(m.nodes[0][0].parameters())}
    # FLOPs of one sample (2 per multiply-add, matmuls only): stem 2*6*8, five nodes of two
    # 8x8 layers, heads 2*8*(3+4+2); each shared node once
    assert count_flops(m, (6,))["total"] == 96 + 5 * 256 + 144
    assert count_flops(m, (6,))["per_task"]["c"] == 96 + 2 * 256 + 2 * 8 * 2


def test_search_forward_at_a_saturated_state_is_the_derived_tree():
    """With logit gaps of 50 every Gumbel sample picks the argmax parent, so the straight-through
    training forward computes the derived tree's outputs."""
    m = model()
    hand_state(m)
    x = torch.randn(4, 6)
    m.train()
    searched = m(x)
    m.set_tree(m.argmax_tree())
    for t, y in m(x).items():
        torch.testing.assert_close(searched[t], y)
