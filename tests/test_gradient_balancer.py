"""The gradient-balancer base (``mtlbench.core.gradient``): with the sum as aggregation it is
equal weighting exactly, in both modes; absent tasks are left out; statistics are logged."""
import pytest
import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.data import Batch
from mtlbench.core.gradient import GradientBalancer
from mtlbench.core.registry import ARCHS, BALANCERS, load_all
from mtlbench.engine.trainer import Trainer
from mtlbench.tasks import ClassificationTask

load_all()
TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 3), ClassificationTask("c", 3)]


class Summed(GradientBalancer):
    def aggregate(self, grads, losses):
        return grads.sum(0), None


class Projected(GradientBalancer):
    """Keeps only the first active task's gradient, weight 2 on its head (exercises w)."""

    def aggregate(self, grads, losses):
        w = torch.zeros(len(grads))
        w[0] = 2.0
        return grads[0], w


def step(balancer, mask_c=None, arch="hard_sharing"):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(lambda: build_backbone({"name": "mlp", "width": 8, "depth": 1}, (5,)), TASKS)
    trainer = Trainer(epochs=1, batch_size=8, device="cpu", progress=False,
                      optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0})
    g = torch.Generator().manual_seed(1)
    masks = None if mask_c is None else {"a": torch.ones(8, dtype=torch.bool), "b": torch.ones(8, dtype=torch.bool),
                                         "c": mask_c}
    b = Batch(torch.randn(8, 5, generator=g), {t.name: torch.randint(0, 3, (8,), generator=g) for t in TASKS}, masks)
    trainer.train_step(trainer.prepare(model, balancer, TASKS), b)
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["parameters", "representation"])
@pytest.mark.parametrize("arch", ["hard_sharing", "mtan"])
def test_summed_aggregation_is_equal_weighting(mode, arch):
    ref = step(BALANCERS.get("equal")(["a", "b", "c"]), arch=arch)
    got = step(Summed(["a", "b", "c"], mode=mode), arch=arch)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)


def test_absent_task_is_left_out_and_weights_reach_the_heads():
    bal = Projected(["a", "b", "c"])
    got = step(bal, mask_c=torch.zeros(8, dtype=torch.bool))
    assert all(torch.count_nonzero(got[n]) == 0 for n in got if n.startswith(("heads.b.", "heads.c.")))
    ref = step(BALANCERS.get("static")(["a", "b", "c"], weights={"a": 2.0, "b": 0.0, "c": 0.0}))
    for n in got:
        if n.startswith("heads.a."):
            torch.testing.assert_close(got[n], ref[n])
    state = bal.epoch_end({})
    assert bal.weights() == {"a": 2.0, "b": 0.0, "c": 0.0} and state["mode"] == "parameters"
    assert -1 <= state["mean_cosine"] <= 1 and 0 <= state["conflict_fraction"] <= 1


def test_independent_networks_fall_back_to_each_task_its_own_gradient():
    ref = step(BALANCERS.get("equal")(["a", "b", "c"]), arch="independent")
    got = step(Summed(["a", "b", "c"]), arch="independent")
    for n in ref:
        torch.testing.assert_close(got[n], ref[n])
    with pytest.raises(ValueError, match="balancer.mode"):
        Summed(["a"], mode="both")
