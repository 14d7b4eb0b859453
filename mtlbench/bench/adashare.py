"""``python -m mtlbench bench adashare``: the cost of an AdaShare search step.

On the same real batches of an embedded dataset (default ``scenes``, its default backbone)
and the same backbone configuration, one training step (forward + backward + optimizer
step, medians of interleaved repeats, ``Trainer.train_pass`` for every step) of:

* ``hard_sharing``: one backbone pass shared by all tasks (arch hard_sharing);
* ``T paths``: every task runs its own pass through the same backbone (T forward passes,
  no gating) - what AdaShare's soft gates make unavoidable while searching;
* ``adashare weight step``: search mode, soft Gumbel-Softmax gates on every block
  (curriculum complete: the worst case), logits frozen;
* ``adashare policy step``: the same forward, weights frozen, Adam on the logits with the
  sparsity and sharing losses (the procedure's policy pass).

Printed: ms/step and the ratios to hard sharing and to T paths (target for the search
steps: <= 1.1x T paths).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import List

import torch

from mtlbench.backbones.base import build_backbone
from mtlbench.core.model import MTLModel, make_heads
from mtlbench.core.registry import ARCHS, BALANCERS, PROCEDURES, load_all
from mtlbench.engine.trainer import Trainer


class TaskPaths(MTLModel):
    """One backbone and one head per task; each task runs its own backbone pass."""

    def __init__(self, backbone_fn, tasks):
        super().__init__(tasks)
        self.backbone = backbone_fn()
        self.heads = make_heads(self.backbone, tasks)

    def forward_tasks(self, x, tasks):
        return {t: self.heads[t](self.backbone(x)) for t in tasks}

    def shared_parameters(self):
        return list(self.backbone.parameters())

    def task_parameters(self, task):
        return list(self.backbone.parameters()) + list(self.heads[task].parameters())


def run(dataset: str = "scenes", batch_size: int = 32, steps: int = 6, repeats: int = 5) -> List[dict]:
    from mtlbench.bench.archs import dataset_batches

    load_all()
    data, batches, bcfg = dataset_batches(dataset, batch_size, steps)
    tasks, names = data.tasks, data.task_names
    trainer = Trainer(epochs=1, batch_size=batch_size, device="cpu", progress=False)

    def build(cls):
        torch.manual_seed(0)
        return cls(lambda: build_backbone(bcfg, data.input_shape), tasks)

    hard, paths, ada, ada_p = build(ARCHS.get("hard_sharing")), build(TaskPaths), \
        build(ARCHS.get("adashare")), build(ARCHS.get("adashare"))
    bal = BALANCERS.get("equal")(names)
    for m in (ada, ada_p):
        m.set_mode("search")
    ada.policy_logits.requires_grad_(False)
    sessions = {n: trainer.prepare(m, bal, tasks) for n, m in (("hard", hard), ("paths", paths), ("ada", ada))}
    for q in ada_p.parameters():
        q.requires_grad_(q is ada_p.policy_logits)
    proc = PROCEDURES.get("adashare")()
    from mtlbench.methods.adashare.search import policy_step, sharing_weights

    sp = trainer.prepare(ada_p, bal, tasks, params=[])
    sp.optimizers["policy"] = torch.optim.Adam([ada_p.policy_logits], lr=proc.policy_lr,
                                               weight_decay=proc.policy_weight_decay)
    lam = torch.ones(len(tasks))
    pstep = policy_step(proc, trainer, 0, sharing_weights(ada_p.num_blocks, proc.sharing_direction), lam)

    def step(name):
        if name == "policy":
            trainer.train_pass(sp, batches, step=pstep, names=("task", "sparsity", "sharing"))
        else:
            trainer.train_pass(sessions[name], batches)

    from mtlbench.bench import progress

    order = ["hard", "paths", "ada", "policy"]
    for n in order:  # warm-up
        step(n)
    times = {n: [] for n in order}
    for r in range(repeats):
        progress(f"repeat {r + 1}/{repeats} (4 kinds of step x {len(batches)})")
        for n in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            step(n)
            times[n].append((time.perf_counter() - t0) / len(batches))
    med = {n: statistics.median(v) for n, v in times.items()}
    labels = {"hard": "hard_sharing", "paths": f"T={len(tasks)} paths", "ada": "adashare weight step",
              "policy": "adashare policy step"}
    return [{"step": labels[n], "ms": med[n] * 1e3, "x_hard": med[n] / med["hard"], "x_paths": med[n] / med["paths"]}
            for n in order]


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench adashare",
                                description="AdaShare search-step time vs hard sharing and T task paths")
    p.add_argument("--dataset", default="scenes")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    ns = p.parse_args(args)
    rows = run(ns.dataset, ns.batch_size, ns.steps, ns.repeats)
    print(f"{ns.dataset}, batch {ns.batch_size}, CPU threads {torch.get_num_threads()}, "
          f"medians of {ns.repeats} interleaved repeats of {ns.steps} steps")
    print(f"{'step':24s} {'ms/step':>9s} {'x hard_sharing':>15s} {'x T paths':>10s}")
    for r in rows:
        print(f"{r['step']:24s} {r['ms']:9.2f} {r['x_hard']:15.2f} {r['x_paths']:10.2f}")
    worst = max(r["x_paths"] for r in rows[2:])
    print(f"search step vs T independent task paths: {worst:.2f}x (target <= 1.1)")
    return 0
