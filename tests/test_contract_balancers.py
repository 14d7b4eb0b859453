"""Contract tests every registered balancer must pass (parametrized over ``BALANCERS``: a new
balancer is tested with no new test code). Each runs the trainer's real step
(``Trainer.prepare`` + ``train_step``: the balancer context, the representation when the
balancer asks for it) on a toy two-task hard-sharing model (mlp backbone, no batch norm)."""
import copy
import math

import pytest
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.data import Batch
from mtlbench.core.registry import ARCHS, BALANCERS, load_all
from mtlbench.engine import configs
from mtlbench.engine.trainer import Trainer
from mtlbench.tasks import ClassificationTask

load_all()
NAMES = BALANCERS.names()
TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 3)]
MODULE_KEYS = set(vars(torch.nn.Module()))


def make_balancer(name, task_names=("a", "b")):
    """The balancer as a run builds it: its config's defaults (``conf/balancer/<name>.yaml``)."""
    node = configs.config_node("balancer", name)
    return BALANCERS.get(name)(list(task_names), **{k: v for k, v in node.items() if k != "name"})


def setup(name, identical=False, seed=0):
    torch.manual_seed(seed)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone({"name": "mlp", "width": 8, "depth": 1}, (5,)), TASKS)
    if identical:  # two tasks with the same head and the same targets: identical losses and gradients
        model.heads["b"].load_state_dict(model.heads["a"].state_dict())
    trainer = Trainer(epochs=1, batch_size=8, device="cpu", progress=False,
                      optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0})
    return model, make_balancer(name), trainer


def batch(identical=False, mask_b=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    ya = torch.randint(0, 3, (8,), generator=g)
    yb = ya.clone() if identical else torch.randint(0, 3, (8,), generator=g)
    masks = None if mask_b is None else {"a": torch.ones(8, dtype=torch.bool), "b": mask_b}
    return Batch(torch.randn(8, 5, generator=g), {"a": ya, "b": yb}, masks)


def step_grads(trainer, session, b):
    """One training step with lr 0 (parameters stay); the gradients it left, by name."""
    trainer.train_step(session, b)
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in session.model.named_parameters()}


def flat(grads, names=None):
    return torch.cat([grads[n].reshape(-1) for n in (names or grads)])


def cosine(u, v):
    return float(u @ v / (u.norm() * v.norm()).clamp_min(1e-30))


@pytest.mark.parametrize("name", NAMES)
def test_every_reached_parameter_gets_a_finite_gradient(name):
    model, bal, trainer = setup(name)
    grads = step_grads(trainer, trainer.prepare(model, bal, TASKS), batch())
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"{name}: no gradient on {missing}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert float(flat(grads).norm()) > 0, f"{name}: an all-zero update"


@pytest.mark.parametrize("name", NAMES)
def test_identical_tasks_give_the_update_of_equal_weights(name):
    """With identical task losses and gradients the update is parallel to equal weighting's.
    A balancer declaring ``random_task_weights`` (RLW: fresh random weights each step, which
    differ between the two identical tasks by design) is held to each part (the shared
    parameters, each head) being parallel to equal's."""
    grads = {}
    for which in ("equal", name):
        model, bal, trainer = setup(which, identical=True)
        grads[which] = step_grads(trainer, trainer.prepare(model, bal, TASKS), batch(identical=True))
    parts = [list(grads["equal"])]
    if getattr(BALANCERS.get(name), "random_task_weights", False):
        parts = [[n for n in grads["equal"] if n.startswith(p)] for p in ("backbone.", "heads.a.", "heads.b.")]
    for names in parts:
        assert cosine(flat(grads[name], names), flat(grads["equal"], names)) > 1 - 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_an_absent_task_contributes_nothing(name):
    model, bal, trainer = setup(name)
    s = trainer.prepare(model, bal, TASKS)
    grads = step_grads(trainer, s, batch(mask_b=torch.zeros(8, dtype=torch.bool)))
    head_b = [n for n in grads if n.startswith("heads.b.")]
    assert all(grads[n] is None or torch.count_nonzero(grads[n]) == 0 for n in head_b)
    # the shared update is along task a's own gradient
    model2, _, _ = setup(name)
    b = batch(mask_b=torch.zeros(8, dtype=torch.bool))
    out = model2(b.x)
    TASKS[0].loss(out["a"], b.targets["a"]).backward()
    shared = [n for n in grads if n.startswith("backbone.")]
    ref = torch.cat([dict(model2.named_parameters())[n].grad.reshape(-1) for n in shared])
    got = flat(grads, shared)
    assert float(got.norm()) == 0 or cosine(got, ref) > 1 - 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_weights_name_the_tasks_and_capabilities_are_declared(name):
    bal = make_balancer(name, ("a", "b", "c"))
    w = bal.weights()
    assert w is None or (list(w) == ["a", "b", "c"] and all(math.isfinite(v) for v in w.values()))
    assert type(bal).distributed in (True, False)
    assert bal.needs_representation in (True, False)
    assert isinstance(type(bal).state_fields, tuple)
    assert all(isinstance(f, str) and hasattr(bal, f) for f in type(bal).state_fields)


def _plain_state(bal):
    return {k: copy.deepcopy(v) for k, v in vars(bal).items() if k not in MODULE_KEYS}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_a_bit_identical_next_step(name):
    """Steps and an epoch end change the balancer; a fresh one loaded from its state_dict
    (what a checkpoint keeps) makes exactly the same next step. Every Python attribute a step
    or an epoch end changed is declared in ``state_fields`` (nothing silently dropped)."""
    model, bal, trainer = setup(name)
    before = _plain_state(bal)
    s = trainer.prepare(model, bal, TASKS)
    for k in range(3):
        trainer.train_step(s, batch(seed=10 + k))
    bal.epoch_end({"a": 1.0, "b": 2.0})
    trainer.train_step(s, batch(seed=20))
    bal.epoch_end({"a": 0.8, "b": 1.5})
    changed = [k for k, v in _plain_state(bal).items() if k not in before or not _same(before[k], v)]
    undeclared = sorted(set(changed) - set(type(bal).state_fields))
    assert not undeclared, f"{name}: {undeclared} change but are not in state_fields (lost on resume)"

    fresh = make_balancer(name)
    fresh.load_state_dict(copy.deepcopy(bal.state_dict()))
    model2 = copy.deepcopy(model)
    s2 = trainer.prepare(model2, fresh, TASKS)
    torch.manual_seed(5)
    g1 = step_grads(trainer, s, batch(seed=30))
    torch.manual_seed(5)
    g2 = step_grads(trainer, s2, batch(seed=30))
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
    assert fresh.weights() == bal.weights()


def _same(a, b) -> bool:
    if isinstance(a, torch.Generator) or isinstance(b, torch.Generator):
        return torch.equal(a.get_state(), b.get_state())
    try:
        return bool(a == b)
    except (RuntimeError, ValueError):  # tensors / arrays
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_step_is_finite(name):
    model, bal, _ = setup(name)
    trainer = Trainer(epochs=1, batch_size=8, device="cpu", progress=False, amp="bf16")
    grads = step_grads(trainer, trainer.prepare(model, bal, TASKS), batch())
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
