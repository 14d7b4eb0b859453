"""Benchmarks: ``python -m mtlbench bench overhead``.

``overhead`` runs the same model on the same batches through ``Trainer.train_epoch``
(with its progress bar, loss bookkeeping and balancer) and through a bare hand-written
PyTorch loop, interleaved, and reports medians: the ratio trainer / bare and the fixed
cost per step in ms. Both loops release gradients alike (``zero_grad(set_to_none=True)``).
Two models: the default run's model (hard sharing, small_cnn, MultiMNIST batches of
the default batch size) and a tiny MLP whose step is so cheap that fixed costs show.
"""
from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from typing import List

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import build_backbone
from .data import Batch
from .registry import ARCHS, BALANCERS, DATASETS
from .tasks import ClassificationTask
from .trainer import Trainer


def _bare_epoch(model, balancer, optimizer, batches: List[Batch], names):
    """A hand-written loop: forward, cross-entropy per task, the method's own backward
    (its balancer: for equal weights exactly ``sum(losses).backward()``), step."""
    model.train()
    for b in batches:
        out = model(b.x)
        losses = {t: F.cross_entropy(out[t], b.targets[t]) for t in names}
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, model)
        optimizer.step()


def _setup(arch, backbone_cfg, tasks, input_shape, lr=1e-3, balancer: str = "equal"):
    torch.manual_seed(0)
    model = ARCHS.get(arch)(lambda: build_backbone(backbone_cfg, input_shape), tasks)
    balancer = BALANCERS.get(balancer)([t.name for t in tasks])
    return model, balancer


def measure(name, model, balancer, tasks, batches, repeats: int):
    trainer = Trainer(epochs=1, batch_size=len(batches[0]), device="cpu", progress=True)
    names = [t.name for t in tasks]
    m_tr, m_bare, b_bare = model, copy.deepcopy(model), copy.deepcopy(balancer)
    opt_tr = trainer.make_optimizer(m_tr, balancer)
    opt_bare = torch.optim.Adam(list(m_bare.parameters()) + list(b_bare.parameters()), lr=opt_tr.defaults["lr"])

    def run_trainer():
        with tqdm(total=len(batches), file=io.StringIO(), leave=False) as bar:
            out = trainer.train_epoch(m_tr, balancer, opt_tr, batches, tasks, bar)
        out.tolist()  # the once-per-epoch read the trainer does

    def run_bare():
        _bare_epoch(m_bare, b_bare, opt_bare, batches, names)

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


def overhead(repeats: int = 7, steps: int = 30, tiny_steps: int = 400) -> List[dict]:
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    # tiny model: 16 features -> residual MLP of width 8 -> two 4-way heads, batch 8
    g = torch.Generator().manual_seed(0)
    tasks = [ClassificationTask("a", 4), ClassificationTask("b", 4)]
    tiny = [Batch(torch.randn(8, 16, generator=g),
                  {t.name: torch.randint(0, 4, (8,), generator=g) for t in tasks}) for _ in range(tiny_steps)]
    model, bal = _setup("hard_sharing", {"name": "mlp", "width": 8, "depth": 1}, tasks, (16,))
    rows.append(measure("tiny (mlp w8, batch 8)", model, bal, tasks, tiny, repeats))
    # the default run's model on real MultiMNIST batches
    data = DATASETS.get("multimnist")(root=None, split_seed=0, n_train=128 * steps, n_val=10, n_test=10)
    batches = list(data.splits["train"].batches(128, shuffle=True, generator=torch.Generator().manual_seed(0)))
    model, bal = _setup("hard_sharing", {"name": "small_cnn", "width": 16, "depths": [1, 1, 1]},
                        data.tasks, data.input_shape)
    rows.append(measure("default (multimnist small_cnn, batch 128)", model, bal, data.tasks, batches, repeats))
    # other methods on the same model and batches (the bare loop runs the same method)
    for arch, balancer in (("hard_sharing", "uw"), ("hard_sharing", "dwa"), ("mtan", "equal"),
                           ("adashare", "equal")):
        if arch not in ARCHS.names() or balancer not in BALANCERS.names():
            continue
        try:
            model, bal = _setup(arch, {"name": "small_cnn", "width": 16, "depths": [1, 1, 1]}, data.tasks,
                                data.input_shape, balancer=balancer)
        except ValueError as exc:  # an architecture that needs another backbone
            print(f"skipped {arch}+{balancer}: {exc}")
            continue
        rows.append(measure(f"{arch}+{balancer} (multimnist small_cnn, batch 128)", model, bal, data.tasks,
                            batches[: max(steps // 2, 4)], repeats))
    return rows


def _dataset_batches(dataset: str, batch_size: int, steps: int):
    """Real batches of an embedded dataset and the dataset's default backbone config."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from .run import build_data

    with initialize_config_module("mtlbench.conf", version_base=None):
        c = OmegaConf.to_container(compose("config", overrides=[f"dataset={dataset}"]), resolve=True)
    dcfg = dict(c["dataset"], limit=batch_size * steps)
    data = build_data(dcfg, c.get("data_root"))
    batches = list(data.splits["train"].batches(batch_size, shuffle=True,
                                                generator=torch.Generator().manual_seed(0), drop_last=True))
    return data, batches, c["backbone"]


def archs(dataset: str = "multimnist", batch_size: int = 32, steps: int = 8, repeats: int = 3) -> List[dict]:
    """Step time of every architecture (with equal weights) and every balancer (with hard
    sharing), relative to hard sharing + equal weights, on the same batches."""
    data, batches, bcfg = _dataset_batches(dataset, batch_size, steps)
    pairs = [(a, "equal") for a in ARCHS.names()] + [("hard_sharing", b) for b in BALANCERS.names() if b != "equal"]
    trainer = Trainer(epochs=1, batch_size=batch_size, device="cpu", progress=False)
    times = {}
    for arch, bal in pairs:
        torch.manual_seed(0)
        model = ARCHS.get(arch)(lambda: build_backbone(bcfg, data.input_shape), data.tasks)
        balancer = BALANCERS.get(bal)(data.task_names)
        opt = trainer.make_optimizer(model, balancer)
        trainer.train_epoch(model, balancer, opt, batches[:1], data.tasks)  # warm-up
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            trainer.train_epoch(model, balancer, opt, batches, data.tasks).tolist()
            runs.append((time.perf_counter() - t0) / len(batches))
        n_params = sum(p.numel() for p in model.parameters())
        times[(arch, bal)] = (statistics.median(runs), n_params)
    ref = times[("hard_sharing", "equal")][0]
    return [{"arch": a, "balancer": b, "ms": t * 1e3, "ratio": t / ref, "params": n}
            for (a, b), (t, n) in times.items()]


# benchmarks that live in their own module: name -> module with ``main(args) -> int``
EXTRA = {
    "grouping": "mtlbench.bench_grouping",   # task-grouping selection: time and gap vs n
    "tabular": "mtlbench.bench_tabular",     # wall time per epoch vs number of tasks
    "adashare": "mtlbench.bench_adashare",   # AdaShare search step vs hard sharing / T paths
    "throughput": "mtlbench.bench_throughput",  # samples/s and peak memory per method, AMP / layout variants
    "affinity": "mtlbench.bench_affinity",   # TAG lookahead affinity (one run) vs trained pair networks
}


def main(args: List[str]) -> int:
    if args and args[0] in EXTRA:
        import importlib

        return importlib.import_module(EXTRA[args[0]]).main(args[1:])
    p = argparse.ArgumentParser(prog="python -m mtlbench bench",
                                epilog=f"also: {', '.join(EXTRA)} (python -m mtlbench bench <name> --help)")
    sub = p.add_subparsers(dest="which", required=True)
    o = sub.add_parser("overhead", help="trainer vs bare PyTorch loop")
    o.add_argument("--repeats", type=int, default=7)
    o.add_argument("--steps", type=int, default=30, help="steps per epoch on the default model")
    a = sub.add_parser("archs", help="step time of each architecture and balancer vs hard sharing")
    a.add_argument("--dataset", default="multimnist")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--steps", type=int, default=8)
    a.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args(args)
    if ns.which == "archs":
        rows = archs(ns.dataset, ns.batch_size, ns.steps, ns.repeats)
        print(f"{ns.dataset}, batch {ns.batch_size}, CPU threads {torch.get_num_threads()}")
        print(f"{'arch':16s} {'balancer':10s} {'params':>10s} {'ms/step':>9s} {'x hard_sharing+equal':>21s}")
        for r in rows:
            print(f"{r['arch']:16s} {r['balancer']:10s} {r['params']:10,d} {r['ms']:9.2f} {r['ratio']:21.2f}")
        return 0
    rows = overhead(ns.repeats, ns.steps)
    print(f"{'model':44s} {'steps':>6s} {'bare ms/step':>13s} {'trainer ms/step':>16s} {'ratio':>7s} {'fixed ms/step':>14s}")
    for r in rows:
        print(f"{r['model']:44s} {r['steps']:6d} {r['bare_ms']:13.3f} {r['trainer_ms']:16.3f} "
              f"{r['ratio']:7.3f} {r['fixed_ms']:14.3f}")
    print(f"fixed cost per step (tiny model): {rows[0]['fixed_ms']:.3f} ms (target < 0.3)")
    print(f"overhead ratio trainer/bare (default model): {rows[1]['ratio']:.3f} (target <= 1.05)")
    return 0
