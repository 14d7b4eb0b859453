"""``python -m mtlbench bench balancers``: the step time of every REGISTERED balancer relative
to ``equal`` on the same model and batches, and its memory overhead.

For each dataset (default: the embedded ``multimnist`` and ``scenes``, each with its default
backbone under hard sharing and real batches) every balancer trains from the same initial
weights on the same batches through ``Trainer.train_pass`` (forward, the balancer's backward,
the optimizer step). After a one-step warm-up, ``--repeats`` passes over ``--steps`` batches
run interleaved step by step (every balancer takes its step on batch b before any takes
batch b+1; the order rotates every repeat) and the median over the steps is reported.
Default: batch 16, 2 steps, 5 repeats, 1 CPU thread (ratios stay stable on a shared machine;
two threads on two busy cores oversubscribe and measured 20x slower here); ``--full``:
batch 32, 10 steps, 9 repeats. Small batches weigh per-step fixed costs (a solver, a host
sync) more than the training budgets of the papers do.

Kinds, found by counting the autograd passes (``torch.autograd.grad`` / ``backward`` calls)
of one step, so balancers added later are classified with no edit here:

* ``loss-scale``: one backward pass (a weighted sum of the losses). Target <= 1.05x equal.
* ``representation``: several passes, the balancer declares ``needs_representation`` (the
  per-task gradients of the shared representation). Target <= 1.3x equal.
* ``parameters``: several passes over the shared parameters. Target: within 1.1x of the
  floor, "T passes": T separate backward passes of the same model (one per task loss, each
  to every parameter, accumulated into ``.grad``) plus the same optimizer step, measured
  alongside.

Memory: the peak of the tensor memory allocated during one training step (parameters,
gradients, optimizer state, activations, temporaries), measured by torch's ``MemTracker``
(``torch.distributed._tools.mem_tracker``, which tracks tensor storages through the
dispatcher; not the process RSS), minus equal's peak; and the balancer's persistent state
(its ``state_dict`` as a checkpoint saves it, e.g. MoCo's tracked gradients).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import statistics
import time
from typing import Dict, List, Optional

import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.registry import ARCHS, BALANCERS, load_all
from mtlbench.engine import configs
from mtlbench.engine.trainer import Trainer, task_losses

TARGETS = {"loss-scale": ("equal", 1.05), "representation": ("equal", 1.3), "parameters": ("T passes", 1.1)}
FLOOR = "(T passes)"


def make_balancer(name: str, task_names):
    """The balancer as a run builds it (its config's defaults), seeded from torch's RNG."""
    node = configs.config_node("balancer", name)
    torch.manual_seed(0)
    return BALANCERS.get(name)(list(task_names), **{k: v for k, v in node.items() if k != "name"})


@contextlib.contextmanager
def count_passes():
    """Counts ``torch.autograd.grad`` / ``torch.autograd.backward`` calls (Tensor.backward
    goes through the latter) inside the block: ``with count_passes() as n: ...; n[0]``."""
    n, grad, backward = [0], torch.autograd.grad, torch.autograd.backward

    def counted(fn):
        def wrapper(*a, **kw):
            n[0] += 1
            return fn(*a, **kw)
        return wrapper

    torch.autograd.grad, torch.autograd.backward = counted(grad), counted(backward)
    try:
        yield n
    finally:
        torch.autograd.grad, torch.autograd.backward = grad, backward


def floor_step(trainer: Trainer):
    """A step function for ``train_pass``: T separate backward passes (one per task loss, to
    every parameter that trains, accumulated into ``.grad``), then the optimizer step."""
    def step(s, batch):
        batch, preds, _ = trainer.forward(s, batch)
        losses = task_losses(s.tasks, preds, batch)
        s.optimizer.zero_grad(set_to_none=True)
        params = [p for p in s.model.parameters() if p.requires_grad]
        names = [t.name for t in s.tasks]
        for k, t in enumerate(names):
            if not losses[t].requires_grad:
                continue
            grads = torch.autograd.grad(losses[t], params, retain_graph=k < len(names) - 1, allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        s.optimizer.step()
        return torch.stack([losses[t] for t in names]).detach()
    return step


def peak_step_bytes(trainer: Trainer, session, batch, step=None) -> Optional[int]:
    """Peak tensor memory (bytes) during one training step, or None when torch's MemTracker
    is not available."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # noqa: BLE001 - a torch build without it
        return None
    tracker = MemTracker()
    tracker.track_external(session.model, session.optimizer, session.balancer)
    with tracker:
        (step or trainer.train_step)(session, batch)
    snap = tracker.get_tracker_snapshot("peak")
    return int(sum(dev.get("Total", 0) for dev in snap.values()))


def state_bytes(balancer) -> int:
    buf = io.BytesIO()
    torch.save(balancer.state_dict(), buf)
    return buf.tell()


def kind_of(balancer, passes: int) -> str:
    if passes <= 1:
        return "loss-scale"
    return "representation" if balancer.needs_representation else "parameters"


def bench_dataset(dataset: str, names: List[str], batch_size: int, steps: int, repeats: int,
                  say=print) -> List[dict]:
    from mtlbench.bench.archs import dataset_batches

    data, batches, bcfg = dataset_batches(dataset, batch_size, steps)
    torch.manual_seed(0)
    base = ARCHS.get("hard_sharing")(lambda: build_backbone(bcfg, data.input_shape), data.tasks)
    trainer = Trainer(epochs=1, batch_size=batch_size, device="cpu", progress=False)
    entries: Dict[str, dict] = {}
    for name in [FLOOR] + names:
        try:
            bal = make_balancer("equal" if name == FLOOR else name, data.task_names)
        except (ValueError, TypeError) as exc:
            say(f"{dataset}: skipped {name}: {exc}")
            continue
        session = trainer.prepare(copy.deepcopy(base), bal, data.tasks)
        step = floor_step(trainer) if name == FLOOR else None
        with count_passes() as n:
            trainer.train_pass(session, batches[:1], step=step)  # warm-up and pass count
        entries[name] = {"session": session, "step": step, "passes": n[0], "times": [],
                         "kind": "floor" if name == FLOOR else kind_of(bal, n[0])}
    order = list(entries)
    gc.disable()
    try:
        for r in range(repeats):  # interleaved step by step, the order rotating every repeat
            for b in batches:
                for name in order[r % len(order):] + order[: r % len(order)]:
                    e = entries[name]
                    t0 = time.perf_counter()
                    trainer.train_pass(e["session"], [b], step=e["step"])
                    e["times"].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    rows = []
    for name, e in entries.items():
        e["peak"] = peak_step_bytes(trainer, e["session"], batches[0], e["step"])
        rows.append({"dataset": dataset, "balancer": name, "kind": e["kind"], "passes": e["passes"],
                     "ms": 1e3 * statistics.median(e["times"]), "peak": e["peak"],
                     "state": state_bytes(e["session"].balancer) if name != FLOOR else 0,
                     "tasks": len(data.tasks)})
    ref = {r["balancer"]: r for r in rows}
    for r in rows:
        r["x_equal"] = r["ms"] / ref["equal"]["ms"] if "equal" in ref else float("nan")
        r["x_floor"] = r["ms"] / ref[FLOOR]["ms"] if FLOOR in ref else float("nan")
        peq = ref.get("equal", {}).get("peak")
        r["extra_mb"] = (r["peak"] - peq) / 2**20 if r["peak"] is not None and peq is not None else None
        target = TARGETS.get(r["kind"])
        r["ratio"] = None if target is None else (r["x_equal"] if target[0] == "equal" else r["x_floor"])
        r["ok"] = None if target is None else r["ratio"] <= target[1]
    return rows


def table(rows: List[dict]) -> List[str]:
    out = [f"{'dataset':10s} {'balancer':14s} {'kind':14s} {'passes':>6s} {'ms/step':>8s} {'x equal':>8s} "
           f"{'x T-pass':>8s} {'peak MB':>8s} {'+MB':>7s} {'state KB':>9s}  target"]
    for r in rows:
        peak = "n/a" if r["peak"] is None else f"{r['peak'] / 2**20:.1f}"
        extra = "n/a" if r["extra_mb"] is None else f"{r['extra_mb']:+.1f}"
        target = TARGETS.get(r["kind"])
        verdict = "" if target is None else (f"<= {target[1]}x {target[0]}: " + ("ok" if r["ok"] else "MISSED"))
        out.append(f"{r['dataset']:10s} {r['balancer']:14s} {r['kind']:14s} {r['passes']:6d} {r['ms']:8.2f} "
                   f"{r['x_equal']:8.2f} {r['x_floor']:8.2f} {peak:>8s} {extra:>7s} {r['state'] / 1024:9.1f}  {verdict}")
    return out


def headline(rows: List[dict]) -> List[str]:
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        parts = []
        for kind, (ref, limit) in TARGETS.items():
            rs = [r for r in rows if r["dataset"] == ds and r["kind"] == kind]
            if rs:
                worst = max(rs, key=lambda r: r["ratio"])
                missed = [r["balancer"] for r in rs if not r["ok"]]
                parts.append(f"{kind} max {worst['ratio']:.2f}x {ref} ({worst['balancer']}; target <= {limit}"
                             f"{'; missed: ' + ','.join(missed) if missed else ''})")
        tasks = next(r["tasks"] for r in rows if r["dataset"] == ds)
        lines.append(f"{ds} (T={tasks}): " + " | ".join(parts))
    return lines


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench balancers",
                                description="step time and memory of every registered balancer vs equal")
    p.add_argument("--datasets", default="multimnist,scenes")
    p.add_argument("--balancers", default="all", help="comma-separated names, or all registered")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (--full: 32)")
    p.add_argument("--steps", type=int, default=None, help="batches per timed pass (default 2; --full: 10)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved passes (default 5; --full: 9)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: stable ratios on a shared machine, where 2 threads oversubscribe)")
    p.add_argument("--full", action="store_true", help="the long version: more steps, repeats, larger batches")
    ns = p.parse_args(args)
    load_all()
    names = BALANCERS.names() if ns.balancers == "all" else [b for b in ns.balancers.split(",") if b]
    unknown = [b for b in names if b not in BALANCERS.names()]
    if unknown:
        from mtlbench.cli.commands import fail

        return fail(f"bench balancers: unknown balancer(s) {unknown} in --balancers; registered: "
                    f"{', '.join(BALANCERS.names())}")
    if "equal" not in names:
        names = ["equal"] + names
    torch.set_num_threads(ns.threads)
    bs = ns.batch_size or (32 if ns.full else 16)
    steps = ns.steps or (10 if ns.full else 2)
    repeats = ns.repeats or (9 if ns.full else 5)
    t0 = time.perf_counter()
    rows = []
    for ds in [d for d in ns.datasets.split(",") if d]:
        rows += bench_dataset(ds, names, bs, steps, repeats)
    print(f"batch {bs}, {steps} steps x {repeats} interleaved repeats (medians), CPU threads "
          f"{torch.get_num_threads()}; memory: peak tensor bytes of one step (torch MemTracker), "
          f"+MB vs equal; state: the balancer's state_dict")
    for line in table(rows):
        print(line)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    for line in headline(rows):
        print(line)
    return 0
