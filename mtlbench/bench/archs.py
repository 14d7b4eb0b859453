"""``python -m mtlbench bench archs``: step time of every architecture (with equal weights)
and every balancer (with hard sharing) relative to hard sharing + equal, on the same batches
of an embedded dataset; the repeats are interleaved over the configurations."""
from __future__ import annotations

import argparse
import statistics
import time
from typing import List

import torch

from mtlbench.backbones import build_backbone
from mtlbench.core.registry import ARCHS, BALANCERS
from mtlbench.engine.trainer import Trainer


def dataset_batches(dataset: str, batch_size: int, steps: int):
    """Real batches of an embedded dataset and the dataset's default backbone config."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from mtlbench.engine.run import build_data

    with initialize_config_module("mtlbench.conf", version_base=None):
        c = OmegaConf.to_container(compose("config", overrides=[f"dataset={dataset}"]), resolve=True)
    dcfg = dict(c["dataset"], limit=batch_size * steps)
    data = build_data(dcfg, c.get("data_root"))
    batches = list(data.splits["train"].batches(batch_size, shuffle=True,
                                                generator=torch.Generator().manual_seed(0), drop_last=True))
    return data, batches, c["backbone"]


def archs(dataset: str = "multimnist", batch_size: int = 32, steps: int = 8, repeats: int = 3) -> List[dict]:
    """Step time of every architecture (with equal weights) and every balancer (with hard
    sharing), relative to hard sharing + equal weights, on the same batches; each repeat
    times every configuration once, in turn (medians over repeats)."""
    data, batches, bcfg = dataset_batches(dataset, batch_size, steps)
    pairs = [(a, "equal") for a in ARCHS.names()] + [("hard_sharing", b) for b in BALANCERS.names() if b != "equal"]
    trainer = Trainer(epochs=1, batch_size=batch_size, device="cpu", progress=False)
    sessions = {}
    for arch, bal in pairs:
        torch.manual_seed(0)
        model = ARCHS.get(arch)(lambda: build_backbone(bcfg, data.input_shape), data.tasks)
        sessions[(arch, bal)] = trainer.prepare(model, BALANCERS.get(bal)(data.task_names), data.tasks)
        trainer.train_pass(sessions[(arch, bal)], batches[:1])  # warm-up
    runs = {key: [] for key in pairs}
    for _ in range(repeats):  # interleaved: load drift lands on every configuration alike
        for key, session in sessions.items():
            t0 = time.perf_counter()
            trainer.train_pass(session, batches)
            runs[key].append((time.perf_counter() - t0) / len(batches))
    times = {key: (statistics.median(runs[key]), sum(p.numel() for p in sessions[key].model.parameters()))
             for key in pairs}
    ref = times[("hard_sharing", "equal")][0]
    return [{"arch": a, "balancer": b, "ms": t * 1e3, "ratio": t / ref, "params": n}
            for (a, b), (t, n) in times.items()]




def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench archs",
                                description="step time of each architecture and balancer vs hard sharing + equal")
    p.add_argument("--dataset", default="multimnist")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args(args)
    rows = archs(ns.dataset, ns.batch_size, ns.steps, ns.repeats)
    print(f"{ns.dataset}, batch {ns.batch_size}, CPU threads {torch.get_num_threads()}")
    print(f"{'arch':16s} {'balancer':10s} {'params':>10s} {'ms/step':>9s} {'x hard_sharing+equal':>21s}")
    for r in rows:
        print(f"{r['arch']:16s} {r['balancer']:10s} {r['params']:10,d} {r['ms']:9.2f} {r['ratio']:21.2f}")
    return 0
