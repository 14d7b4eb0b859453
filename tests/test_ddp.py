"""DistributedDataParallel on CPU (gloo, 2 processes): one step on two half-batches equals
one single-process step on the whole batch; metrics are reduced over ranks."""
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlbench.backbones.base import build_backbone
from mtlbench.core.data import Batch, TensorSplit
from mtlbench.engine.distributed import DistContext
from mtlbench.core.registry import ARCHS, BALANCERS, load_all
from mtlbench.tasks import ClassificationTask
from mtlbench.engine.trainer import Trainer

TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 4)]
BACKBONE = {"name": "mlp", "width": 16, "depth": 2, "dropout": 0.0}   # no batch norm


def _setup(balancer_name):
    load_all()
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone(BACKBONE, (10,)), TASKS)
    balancer = BALANCERS.get(balancer_name)([t.name for t in TASKS])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 10, generator=g)
    batch = Batch(x, {"a": torch.randint(0, 3, (8,), generator=g), "b": torch.randint(0, 4, (8,), generator=g)})
    return model, balancer, batch


def _step(model, balancer, batch, dctx=None):
    trainer = Trainer(epochs=1, batch_size=8, device="cpu", progress=False,
                      optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    if dctx is not None:
        trainer.dist = dctx
    loss = trainer.train_pass(trainer.prepare(model, balancer, TASKS), [batch])
    split = TensorSplit(batch.x, batch.targets)
    scores, losses = trainer.evaluate(model, split, TASKS) if dctx is None else _eval(trainer, model, split)
    return [p.detach().clone() for p in model.parameters()] + [p.detach().clone() for p in balancer.parameters()], \
        loss, scores, losses


def _eval(trainer, model, split):
    trainer.eval_batch_size = 2  # 4 batches: each rank evaluates 2 of them
    return trainer.evaluate(model, split, TASKS)


def _worker(rank, init_file, balancer_name, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model, balancer, batch = _setup(balancer_name)
        seen = []
        model.register_forward_hook(lambda m, inp, outp: seen.append(inp[0].shape[0]) if m.training else None)
        params, loss, scores, losses = _step(model, balancer, batch, DistContext(rank, 2, rank))
        if rank == 0:
            torch.save({"params": params, "loss": loss, "scores": scores, "losses": losses, "seen": seen}, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="torch.distributed (gloo) unavailable")
@pytest.mark.parametrize("balancer_name", ["equal", "uw"])
def test_two_process_ddp_step_equals_single_process_step(balancer_name, tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), balancer_name, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    assert got["seen"] == [4]  # the rank trained on its half of the batch only
    model, balancer, batch = _setup(balancer_name)
    params, loss, scores, losses = _step(model, balancer, batch)
    assert len(got["params"]) == len(params)
    for a, b in zip(got["params"], params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert got["loss"] == pytest.approx(loss, abs=1e-6)
    for t in scores:
        for m in scores[t]:
            assert got["scores"][t][m] == pytest.approx(scores[t][m], abs=1e-9)
        assert got["losses"][t] == pytest.approx(losses[t], abs=1e-6)


def test_gradient_balancer_refuses_ddp():
    load_all()
    trainer = Trainer(epochs=1, batch_size=8, device="cpu", progress=False)
    trainer.dist = DistContext(0, 2, 0)
    with pytest.raises(ValueError, match="cannot run under torchrun"):
        trainer.check_distributed(BALANCERS.get("mgda")(["a", "b"]))
