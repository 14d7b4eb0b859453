"""``python -m mtlbench bench tabular``: wall time per training epoch of each method on the
tabular datasets, and how it grows with the number of tasks (10, 30, 139 on School).

For each (dataset, number of tasks, method) the model is built as the run would build it
(the dataset's config: resmlp backbone, batch size) and one full training epoch is timed
through ``Trainer.train_pass`` after a one-step warm-up (median of ``--repeats``). The
growth column is the time relative to the smallest task count of the same method.
Datasets whose files are absent from ``--data-root`` are skipped with a note. By default an
epoch is capped at 10 steps (ms/step is the comparable column; a few minutes in all);
``--full`` times whole epochs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import List

import torch

METHODS = {"stl": ("independent", "equal"), "hard_sharing": ("hard_sharing", "equal"),
           "uncertainty": ("hard_sharing", "uw"), "mgda": ("hard_sharing", "mgda"),
           "cross_stitch": ("cross_stitch", "equal"), "mtan": ("mtan", "dwa")}


def _config(dataset: str, overrides: List[str]):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("mtlbench.conf", version_base=None):
        return OmegaConf.to_container(compose("config", overrides=[f"dataset={dataset}", *overrides]), resolve=True)


def epoch_time(dataset: str, n_tasks: int, method: str, data_root: str, repeats: int = 1, max_steps=None) -> dict:
    from mtlbench.backbones.base import build_backbone
    from mtlbench.core.registry import ARCHS, BALANCERS
    from mtlbench.engine.run import build_data
    from mtlbench.engine.trainer import Trainer

    c = _config(dataset, [f"data_root={data_root}", f"dataset.max_tasks={n_tasks}"]
                if dataset in ("school", "landmine", "yeast") else [f"data_root={data_root}"])
    data = build_data(c["dataset"], c["data_root"])
    arch, bal = METHODS[method]
    torch.manual_seed(0)
    model = ARCHS.get(arch)(lambda: build_backbone(c["backbone"], data.input_shape), data.tasks)
    balancer = BALANCERS.get(bal)(data.task_names)
    tr = Trainer(**{**c["trainer"], "device": "cpu", "progress": False, "max_steps_per_epoch": max_steps})
    session = tr.prepare(model, balancer, data.tasks)
    train = data.splits["train"]
    g = torch.Generator().manual_seed(0)
    tr.train_pass(session, [next(iter(train.batches(tr.batch_size, True, g, True)))])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tr.train_pass(session, train.batches(tr.batch_size, True, g, True))
        times.append(time.perf_counter() - t0)
    steps = min(train.num_batches(tr.batch_size, True), max_steps or 1 << 30)
    return {"dataset": dataset, "tasks": len(data.tasks), "method": method, "epoch_s": statistics.median(times),
            "steps": steps, "params": sum(p.numel() for p in model.parameters())}


def main(args: List[str]) -> int:
    from mtlbench.core.data import DataError

    p = argparse.ArgumentParser(prog="python -m mtlbench bench tabular")
    p.add_argument("--data-root", default="../shared/data", help="folder holding school/, landmine/, census_income/")
    p.add_argument("--datasets", default="school,landmine,census_income,yeast")
    p.add_argument("--school-tasks", default="10,30,139", help="task counts timed on school")
    p.add_argument("--methods", default="stl,hard_sharing,uncertainty,mgda,cross_stitch,mtan")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap steps per epoch (the time is then per capped epoch; default 10, --full: none)")
    p.add_argument("--full", action="store_true", help="the long version: whole epochs")
    ns = p.parse_args(args)
    if ns.max_steps is None and not ns.full:
        ns.max_steps = 10
    methods = [m for m in ns.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"bench tabular: unknown method(s) {bad}; known: {', '.join(METHODS)}")
    print(f"wall time per training epoch (CPU threads {torch.get_num_threads()}; median of {ns.repeats})")
    print(f"{'dataset':14s} {'tasks':>5s} {'method':13s} {'params':>10s} {'steps':>6s} {'s/epoch':>9s} "
          f"{'ms/step':>8s} {'x fewest tasks':>15s}")
    growth = {}
    for ds in [d for d in ns.datasets.split(",") if d]:
        counts = [int(n) for n in ns.school_tasks.split(",")] if ds == "school" else [0]
        base = {}
        for n in counts:
            for m in methods:
                print(f"[bench] {ds}{f' ({n} tasks)' if n else ''}: {m}", flush=True)
                try:
                    r = epoch_time(ds, n or 10**6, m, ns.data_root, ns.repeats, ns.max_steps)
                except DataError as exc:
                    print(f"{ds:14s} skipped: {exc}")
                    break
                base.setdefault(m, r["epoch_s"] / r["steps"])
                if ds == "school":
                    growth[m] = (r["tasks"], r["epoch_s"] / r["steps"] / base[m])
                print(f"{ds:14s} {r['tasks']:5d} {m:13s} {r['params']:10,d} {r['steps']:6d} {r['epoch_s']:9.2f} "
                      f"{1e3 * r['epoch_s'] / r['steps']:8.1f} {r['epoch_s'] / r['steps'] / base[m]:15.2f}",
                      flush=True)
            else:
                continue
            break
    if growth:
        print("ms/step at the most School tasks vs the fewest: "
              + ", ".join(f"{m} {g:.2f}x ({n} tasks)" for m, (n, g) in growth.items()))
    return 0
