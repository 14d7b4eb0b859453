"""Benchmarks: ``python -m mtlbench bench overhead``.

``overhead`` runs the same model on the same batches through ``Trainer.train_pass``
(with its progress bar, loss bookkeeping and balancer) and through a bare hand-written
PyTorch loop, interleaved, and reports medians: the ratio trainer / bare and the fixed
cost per step in ms. Both loops release gradients alike (``zero_grad(set_to_none=True)``).
Two models: the default run's model (hard sharing, small_cnn, MultiMNIST batches of
the default batch size) and a tiny MLP whose step is so cheap that fixed costs show.
``--full`` adds rows for other methods on the default model (uw, dwa, mtan, adashare: the
long part, minutes) and more repeats; the default finishes in about a minute.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import List

import torch
import torch.nn.functional as F

from mtlbench.backbones.base import build_backbone
from mtlbench.core.data import Batch
from mtlbench.core.registry import ARCHS, BALANCERS, DATASETS
from mtlbench.tasks import ClassificationTask
from mtlbench.engine.trainer import Trainer


# the default run's model and batch size (conf/dataset/multimnist.yaml)
DEFAULT_BACKBONE = {"name": "small_cnn", "width": 16, "depths": [1, 1, 1], "stem_stride": 2}
BATCH = 64


def _bare_epoch(model, balancer, ctx, optimizer, batches: List[Batch], names):
    """A hand-written loop: forward, cross-entropy per task, the method's own backward
    (its balancer: for equal weights exactly ``sum(losses).backward()``), step."""
    model.train()
    for b in batches:
        out = model(b.x)
        losses = {t: F.cross_entropy(out[t], b.targets[t]) for t in names}
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, ctx)
        optimizer.step()


def _setup(arch, backbone_cfg, tasks, input_shape, lr=1e-3, balancer: str = "equal"):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(lambda: build_backbone(backbone_cfg, input_shape), tasks)
    balancer = BALANCERS.get(balancer)([t.name for t in tasks])
    return model, balancer


def measure(name, model, balancer, tasks, batches, repeats: int):
    trainer = Trainer(epochs=1, batch_size=len(batches[0]), device="cpu", progress="auto")
    names = [t.name for t in tasks]
    m_tr, m_bare, b_bare = model, copy.deepcopy(model), copy.deepcopy(balancer)
    session = trainer.prepare(m_tr, balancer, tasks)
    opt_bare = torch.optim.Adam(list(m_bare.parameters()) + list(b_bare.parameters()),
                                lr=session.optimizer.defaults["lr"])
    ctx_bare = trainer.balancer_context(m_bare, b_bare)

    def run_trainer():  # as a run does: progress bar on a terminal only, one read per pass
        trainer.train_pass(session, batches)

    def run_bare():
        _bare_epoch(m_bare, b_bare, ctx_bare, opt_bare, batches, names)

    run_trainer(), run_bare()  # warm-up
    t_tr, t_bare = [], []
    for r in range(repeats):
        order = [(run_trainer, t_tr), (run_bare, t_bare)]
        for fn, acc in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - t0) / len(batches))
    tr, bare = statistics.median(t_tr), statistics.median(t_bare)
    return {"model": name, "steps": len(batches), "bare_ms": bare * 1e3, "trainer_ms": tr * 1e3,
            "ratio": tr / bare, "fixed_ms": (tr - bare) * 1e3}


def overhead(repeats: int = 7, steps: int = 30, tiny_steps: int = 400, methods: bool = True) -> List[dict]:
    from mtlbench.bench import progress

    torch.set_num_threads(torch.get_num_threads())
    rows = []
    # tiny model: 16 features -> residual MLP of width 8 -> two 4-way heads, batch 8
    g = torch.Generator().manual_seed(0)
    tasks = [ClassificationTask("a", 4), ClassificationTask("b", 4)]
    tiny = [Batch(torch.randn(8, 16, generator=g),
                  {t.name: torch.randint(0, 4, (8,), generator=g) for t in tasks}) for _ in range(tiny_steps)]
    model, bal = _setup("hard_sharing", {"name": "mlp", "width": 8, "depth": 1}, tasks, (16,))
    progress(f"tiny model: {repeats} interleaved repeats of {tiny_steps} steps")
    rows.append(measure("tiny (mlp w8, batch 8)", model, bal, tasks, tiny, repeats))
    # the default run's model on real MultiMNIST batches
    data = DATASETS.get("multimnist")(root=None, split_seed=0, n_train=BATCH * steps, n_val=10, n_test=10)
    batches = list(data.splits["train"].batches(BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)))
    model, bal = _setup("hard_sharing", DEFAULT_BACKBONE,
                        data.tasks, data.input_shape)
    progress(f"default model: {repeats} interleaved repeats of {len(batches)} steps")
    rows.append(measure(f"default (multimnist small_cnn, batch {BATCH})", model, bal, data.tasks, batches, repeats))
    # other methods on the same model and batches (the bare loop runs the same method)
    for arch, balancer in (("hard_sharing", "uw"), ("hard_sharing", "dwa"), ("mtan", "equal"),
                           ("adashare", "equal")) if methods else ():
        if arch not in ARCHS.names() or balancer not in BALANCERS.names():
            continue
        progress(f"{arch}+{balancer}: {repeats} interleaved repeats of {max(steps // 2, 4)} steps")
        try:
            model, bal = _setup(arch, DEFAULT_BACKBONE, data.tasks,
                                data.input_shape, balancer=balancer)
        except ValueError as exc:  # an architecture that needs another backbone
            print(f"skipped {arch}+{balancer}: {exc}")
            continue
        rows.append(measure(f"{arch}+{balancer} (multimnist small_cnn, batch {BATCH})", model, bal, data.tasks,
                            batches[: max(steps // 2, 4)], repeats))
    return rows


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench overhead", description="trainer vs bare PyTorch loop")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; --full 7)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch on the default model (default 20; --full 30)")
    p.add_argument("--full", action="store_true", help="the long version: more repeats and steps, plus the "
                                                       "uw / dwa / mtan / adashare rows (minutes)")
    ns = p.parse_args(args)
    repeats, steps = ns.repeats or (7 if ns.full else 5), ns.steps or (30 if ns.full else 20)
    rows = overhead(repeats, steps, 400 if ns.full else 200, methods=ns.full)
    print(f"{'model':44s} {'steps':>6s} {'bare ms/step':>13s} {'trainer ms/step':>16s} {'ratio':>7s} {'fixed ms/step':>14s}")
    for r in rows:
        print(f"{r['model']:44s} {r['steps']:6d} {r['bare_ms']:13.3f} {r['trainer_ms']:16.3f} "
              f"{r['ratio']:7.3f} {r['fixed_ms']:14.3f}")
    print(f"fixed cost per step (tiny model): {rows[0]['fixed_ms']:.3f} ms (target < 0.3)")
    print(f"overhead ratio trainer/bare (default model): {rows[1]['ratio']:.3f} (target <= 1.05)")
    return 0
