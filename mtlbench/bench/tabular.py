"""``python -m mtlbench bench tabular``: wall time per training epoch of each method on the
tabular datasets, and how it grows with the number of tasks (10, 30, 139 on School).

For each (dataset, number of tasks, method) the model is built as the run would build it
(the dataset's config: resmlp backbone, batch size) and one full training epoch is timed
through ``Trainer.train_pass`` after a one-step warm-up (median of ``--repeats``). The
growth column is the time relative to the smallest task count of the same method.
Datasets whose files are absent from ``--data-root`` are skipped with a note. By default an
epoch is capped at 10 steps (ms/step is the comparable column; a few minutes in all);
``--full`` times whole epochs.
Balancers as T grows (``--balancers``: names or ``all``; by default only with ``--full``, as it takes minutes): on School
(``--balancer-school-tasks``, default 10,30; 139 is opt-in, it takes minutes) and Landmine
(all 29 fields), hard sharing with the dataset's model and batch size, each balancer takes a warm-up step and ``--balancer-steps`` timed steps on the
same batches (1 CPU thread, per-step median), then one step under torch's MemTracker (peak
tensor memory of a step, as ``bench balancers``). It reports ms/step, the ratio to ``equal``
at the same T, the growth from the fewest tasks, the peak memory and whether the balancer
copes: ``ok`` (finished, finite losses), ``non-finite``, or the error. The headline lists,
per dataset and T, the balancers that did not cope and the slowest one.
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


def balancer_costs(dataset: str, n_tasks: int, names: List[str], data_root: str, steps: int = 3) -> List[dict]:
    """Per balancer on ``dataset`` with its first ``n_tasks`` tasks: ms/step, peak memory, status."""
    import copy

    from mtlbench.backbones.base import build_backbone
    from mtlbench.bench.balancers import count_passes, kind_of, make_balancer, peak_step_bytes
    from mtlbench.core.registry import ARCHS
    from mtlbench.engine.run import build_data
    from mtlbench.engine.trainer import Trainer, TrainingError

    c = _config(dataset, [f"data_root={data_root}", f"dataset.max_tasks={n_tasks}"])
    data = build_data(c["dataset"], c["data_root"])
    torch.manual_seed(0)
    base = ARCHS.get("hard_sharing")(lambda: build_backbone(c["backbone"], data.input_shape), data.tasks)
    tr = Trainer(**{**c["trainer"], "device": "cpu", "progress": False, "max_steps_per_epoch": None})
    batches = list(data.splits["train"].batches(tr.batch_size, True, torch.Generator().manual_seed(0), True))
    batches = (batches * (steps + 2))[: steps + 2]
    rows = []
    for name in names:
        row = {"dataset": dataset, "tasks": len(data.tasks), "balancer": name, "kind": "", "ms": float("nan"),
               "peak": None, "status": "ok"}
        try:
            bal = make_balancer(name, data.task_names)
            s = tr.prepare(copy.deepcopy(base), bal, data.tasks)
            with count_passes() as n:
                tr.train_pass(s, batches[:1])
            row["kind"] = kind_of(bal, n[0])
            times = []
            for b in batches[1: steps + 1]:
                t0 = time.perf_counter()
                tr.train_pass(s, [b])
                times.append(time.perf_counter() - t0)
            row["ms"] = 1e3 * statistics.median(times)
            row["peak"] = peak_step_bytes(tr, s, batches[steps + 1])
        except TrainingError as exc:
            row["status"] = "non-finite" if "non-finite" in str(exc) else f"error: {exc}"
        except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
            row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        rows.append(row)
    eq = next((r["ms"] for r in rows if r["balancer"] == "equal"), float("nan"))
    for r in rows:
        r["x_equal"] = r["ms"] / eq
    return rows


def _balancer_section(ns) -> None:
    from mtlbench.core.data import DataError
    from mtlbench.core.registry import BALANCERS, load_all

    load_all()
    names = BALANCERS.names() if ns.balancers == "all" else [b for b in ns.balancers.split(",") if b]
    if not names:
        return
    names = ["equal"] + [n for n in names if n != "equal"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"\nbalancers as T grows: hard sharing, {ns.balancer_steps} timed steps (median), 1 CPU thread; "
          f"peak MB: tensor memory of one step (torch MemTracker)")
    print(f"{'dataset':10s} {'tasks':>5s} {'balancer':14s} {'kind':14s} {'ms/step':>9s} {'x equal':>8s} "
          f"{'x fewest T':>10s} {'peak MB':>8s}  status")
    heads, first = [], {}
    settings = [("school", int(n)) for n in ns.balancer_school_tasks.split(",") if n] + [("landmine", 10**6)]
    for ds, n in settings:
        if ds not in ns.balancer_datasets.split(","):
            continue
        try:
            rows = balancer_costs(ds, n, names, ns.data_root, ns.balancer_steps)
        except DataError as exc:
            print(f"{ds:10s} skipped: {exc}")
            continue
        for r in rows:
            growth = r["ms"] / first.setdefault((ds, r["balancer"]), r["ms"])
            peak = "n/a" if r["peak"] is None else f"{r['peak'] / 2**20:.1f}"
            print(f"{ds:10s} {r['tasks']:5d} {r['balancer']:14s} {r['kind']:14s} {r['ms']:9.1f} {r['x_equal']:8.2f} "
                  f"{growth:10.2f} {peak:>8s}  {r['status']}", flush=True)
        bad = [r["balancer"] for r in rows if r["status"] != "ok"]
        slow = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["ms"], default=None)
        heads.append(f"{ds} T={rows[0]['tasks']}: {len(rows) - len(bad)}/{len(rows)} cope"
                     + (f" (not: {', '.join(bad)})" if bad else "")
                     + (f", slowest {slow['balancer']} {slow['x_equal']:.1f}x equal" if slow else ""))
    torch.set_num_threads(threads)
    for line in heads:
        print(line)


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
    p.add_argument("--balancers", default=None,
                   help="balancers timed as T grows: names or all (default: all with --full, else none)")
    p.add_argument("--balancer-steps", type=int, default=3, help="timed steps per balancer and T")
    p.add_argument("--balancer-datasets", default="school,landmine")
    p.add_argument("--balancer-school-tasks", default="10,30",
                   help="School task counts of the balancer section (139: every task, minutes per balancer)")
    ns = p.parse_args(args)
    if ns.max_steps is None and not ns.full:
        ns.max_steps = 10
    if ns.balancers is None:
        ns.balancers = "all" if ns.full else ""
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
    _balancer_section(ns)
    return 0
