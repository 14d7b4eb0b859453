"""Contract tests every registered architecture must pass on every backbone family
(parametrized over ``ARCHS`` x backbone families: a new architecture is tested with no new
test code). An architecture that does not support a backbone must refuse it with a one-line
``ValueError`` naming the backbone; that refusal is the contract for the pair."""
import pytest
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.graphs import GraphShape, random_graphs
from mtlbench.core.model import count_params
from mtlbench.core.registry import ARCHS, load_all
from mtlbench.tasks import ClassificationTask

load_all()
# one small member of every backbone family: conv (plain and residual), ResNet, SegNet,
# feature-vector MLPs
FAMILIES = {
    "small_cnn": ({"name": "small_cnn", "width": 4}, (3, 16, 16)),
    "small_resnet": ({"name": "small_resnet", "width": 4}, (3, 16, 16)),
    "resnet18": ({"name": "resnet18", "width": 4, "output_stride": 32, "head": "conv"}, (3, 32, 32)),
    "segnet": ({"name": "segnet", "width": 2}, (3, 32, 32)),
    "mlp": ({"name": "mlp", "width": 8, "depth": 2}, (6,)),
    "resmlp": ({"name": "resmlp", "width": 8, "depth": 2}, (6,)),
    # graphs (molecules): input_shape is a GraphShape, the example input a batch of random graphs
    "mpnn": ({"name": "mpnn", "width": 8, "edge_hidden": 8}, GraphShape(11, 4)),
}
CASES = [(a, f) for a in ARCHS.names() for f in FAMILIES]
TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 4), ClassificationTask("c", 2)]


def build(arch, family):
    cfg, shape = FAMILIES[family]
    torch.manual_seed(0)
    try:
        return ARCHS.get(arch)(lambda: build_backbone(cfg, shape), TASKS), shape
    except ValueError as exc:  # a clear refusal is the contract for an unsupported backbone
        msg = str(exc)
        assert "\n" not in msg and cfg["name"] in msg, f"{arch} on {family}: unclear refusal {msg!r}"
        return None, shape


def example(shape):
    """A batch of 2 inputs for ``shape``: random graphs for a GraphShape, else a random tensor."""
    return random_graphs(shape, 2) if isinstance(shape, GraphShape) else torch.randn(2, *shape)


def ids(params):
    return {id(p) for p in params}


@pytest.fixture(params=CASES, ids=[f"{a}-{f}" for a, f in CASES])
def built(request):
    arch, family = request.param
    model, shape = build(arch, family)
    if model is None:
        return None
    model.eval()  # deterministic (no dropout, BN running stats): subsets must equal the full forward
    return model, example(shape)


def test_forward_tasks_returns_exactly_the_subset(built):
    if built is None:
        return
    model, x = built
    full = model(x)
    assert list(full) == model.task_names
    for subset in (["a"], ["c", "a"], ["b"]):
        out = model.forward_tasks(x, subset)
        assert set(out) == set(subset)
        for t in subset:
            torch.testing.assert_close(out[t], full[t])
    preds, rep = model(x, representation=True)
    assert set(preds) == set(model.task_names)
    if rep is not None:  # a cut: each task's shared gradient flows through the representation
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        for t in model.task_names:
            loss = preds[t].square().sum()
            direct = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            (g_rep,) = torch.autograd.grad(loss, rep, retain_graph=True)
            via = torch.autograd.grad(rep, shared, grad_outputs=g_rep, retain_graph=True, allow_unused=True)
            for d, v in zip(direct, via):
                torch.testing.assert_close(torch.zeros(()) if d is None else d, torch.zeros(()) if v is None else v)


def test_a_task_loss_reaches_only_shared_and_its_own_parameters(built):
    if built is None:
        return
    model, x = built
    shared = ids(model.shared_parameters())
    for t in model.task_names:
        own = ids(model.task_specific_parameters(t))
        assert not own & shared
        assert ids(model.task_parameters(t)) == own | shared
        model.zero_grad(set_to_none=True)
        model.forward_tasks(x, [t])[t].square().sum().backward()
        reached = {id(p) for p in model.parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0}
        assert reached <= own | shared, f"task {t}'s loss reaches parameters outside its own and the shared ones"
        others = set().union(*(ids(model.task_specific_parameters(u)) for u in model.task_names if u != t))
        assert not reached & others


def test_parameter_counts_are_the_sum_of_declared_parts(built):
    if built is None:
        return
    model, _ = built
    parts = model.parameter_groups()
    seen = [id(p) for ps in parts.values() for p in ps]
    assert len(seen) == len(set(seen)), "declared parts overlap"
    assert set(seen) == ids(model.parameters()), "declared parts do not cover every parameter"
    counts = count_params(model)
    assert counts["total"] == sum(counts["parts"].values()) == sum(p.numel() for p in model.parameters())
    assert ids(model.last_shared_parameters()) <= ids(model.shared_parameters())
    assert all(0 < counts["per_task"][t] <= counts["total"] for t in model.task_names)


def test_every_arch_runs_on_some_family_of_each_input_kind():
    """No architecture refuses every image backbone or every vector backbone."""
    for arch in ARCHS.names():
        for kind in (("small_cnn", "small_resnet", "resnet18", "segnet"), ("mlp", "resmlp")):
            assert any(build(arch, f)[0] is not None for f in kind), (arch, kind)
