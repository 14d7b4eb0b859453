"""``python -m mtlbench bench throughput [--datasets scenes multimnist] [--methods ...]``

For every method preset (``mtlbench/conf/method``) on each dataset: training and
evaluation samples per second through the common trainer (``Trainer.train_pass`` /
``Trainer.evaluate`` on the same real batches), and peak memory (CUDA: max allocated;
CPU: resident memory after training minus before the model was built, in a fresh
process per measurement),
with option variants side by side (default fp32, ``amp=bf16``, ``channels_last`` for
image inputs). Ratios are to hard sharing with the same options. By default hard sharing
and MTAN only (a couple of minutes); ``--full`` (or ``--methods``) measures every preset. Procedures that
compose several trainer runs (AdaShare, task grouping) are measured on the step they
repeat: AdaShare's architecture in search mode; grouping candidates are hard-sharing
runs (their row would repeat hard sharing's, so they are left out and said so).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import List, Optional

import torch

VARIANTS = {"fp32": {}, "bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True}}


def _compose(method: str, dataset: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("mtlbench.conf", version_base=None):
        return OmegaConf.to_container(compose("config", overrides=[f"method={method}", f"dataset={dataset}"]),
                                      resolve=True)


def measure_one(method: str, dataset: str, variant: str, batch_size: int, steps: int, device: str) -> dict:
    """One (method, dataset, variant) measurement in this process."""
    from mtlbench.backbones.base import build_backbone
    from mtlbench.bench.archs import dataset_batches
    from mtlbench.core.data import TensorSplit
    from mtlbench.core.registry import ARCHS, BALANCERS, load_all
    from mtlbench.engine.trainer import Trainer

    load_all()
    c = _compose(method, dataset)
    data, batches, _ = dataset_batches(dataset, batch_size, steps + 2)
    base_rss = _rss_mb()
    trainer = Trainer(epochs=1, batch_size=batch_size, eval_batch_size=batch_size, device=device,
                      progress=False, **VARIANTS[variant])
    torch.manual_seed(0)
    bcfg = c["backbone"]
    model = ARCHS.get(c["arch"]["name"])(lambda: build_backbone(bcfg, data.input_shape), data.tasks,
                                         **{k: v for k, v in c["arch"].items() if k != "name"})
    balancer = BALANCERS.get(c["balancer"]["name"])(data.task_names,
                                                    **{k: v for k, v in c["balancer"].items() if k != "name"})
    session = trainer.prepare(model, balancer, data.tasks)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    trainer.train_pass(session, batches[:2])  # warm-up
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    trainer.train_pass(session, batches[2:])
    sync()
    train_s = time.perf_counter() - t0
    rss = _rss_mb()
    xs = torch.cat([b.x for b in batches[2:]])
    split = TensorSplit(xs, {t: torch.cat([b.targets[t] for b in batches[2:]]) for t in data.task_names})
    trainer.evaluate(model, TensorSplit(xs[:batch_size], {t: v[:batch_size] for t, v in split.targets.items()}),
                     data.tasks)
    t0 = time.perf_counter()
    trainer.evaluate(model, split, data.tasks)
    sync()
    eval_s = time.perf_counter() - t0
    n = len(xs)
    # CUDA: max allocated; CPU: resident memory after training minus before the model was
    # built (the dataset's arrays are not counted)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if trainer.device.type == "cuda"
            else max(rss, _rss_mb()) - base_rss)
    return {"method": method, "dataset": dataset, "variant": variant, "train_sps": n / train_s,
            "eval_sps": n / eval_s, "peak_mb": peak, "params": sum(p.numel() for p in model.parameters()),
            "device": str(trainer.device)}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _methods() -> List[str]:
    from mtlbench.cli.commands import config_options

    return config_options("method")


def _skip_reason(method: str, dataset: str) -> Optional[str]:
    c = _compose(method, dataset)
    if c["procedure"]["name"] not in ("single", "adashare"):
        return f"procedure '{c['procedure']['name']}' composes hard-sharing runs (see hard_sharing)"
    return None


def main(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench throughput")
    p.add_argument("--datasets", nargs="+", default=["multimnist", "scenes"])
    p.add_argument("--methods", nargs="+", default=None,
                   help="method presets (default: hard_sharing mtan; --full: every preset)")
    p.add_argument("--full", action="store_true", help="the long version: every method preset")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", nargs=3, metavar=("METHOD", "DATASET", "VARIANT"), help=argparse.SUPPRESS)
    ns = p.parse_args(args)
    if ns.one:
        print(json.dumps(measure_one(*ns.one, ns.batch_size, ns.steps, ns.device)))
        return 0
    from mtlbench.bench import progress

    methods = ns.methods or (_methods() if ns.full else ["hard_sharing", "mtan"])
    rows, skipped = [], []
    jobs = len(ns.datasets) * len(methods) * len(ns.variants)
    k = 0
    for dataset in ns.datasets:
        for method in methods:
            why = _skip_reason(method, dataset)
            if why:
                skipped.append(f"{method} on {dataset}: {why}")
                k += len(ns.variants)
                continue
            for variant in ns.variants:
                k += 1
                progress(f"{k}/{jobs}: {method} on {dataset} ({variant}), a fresh process")
                cmd = [sys.executable, "-m", "mtlbench", "bench", "throughput", "--one", method, dataset, variant,
                       "--batch-size", str(ns.batch_size), "--steps", str(ns.steps), "--device", ns.device]
                out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if out.returncode != 0:
                    skipped.append(f"{method} on {dataset} ({variant}): "
                                   f"{(out.stderr.strip().splitlines() or ['failed'])[-1][:160]}")
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"batch {ns.batch_size}, {ns.steps} timed steps, CPU threads {torch.get_num_threads()}; "
          f"ratios to hard_sharing with the same variant")
    head = (f"{'dataset':11s} {'method':14s} {'variant':13s} {'params':>10s} {'train/s':>9s} {'x hs':>6s} "
            f"{'eval/s':>9s} {'x hs':>6s} {'mem MB':>9s} {'x hs':>6s}")
    print(head)
    for r in rows:
        ref = next((q for q in rows if q["method"] == "hard_sharing" and q["dataset"] == r["dataset"]
                    and q["variant"] == r["variant"]), None)
        rt = lambda k: f"{r[k] / ref[k]:6.2f}" if ref else f"{'-':>6s}"  # noqa: E731
        print(f"{r['dataset']:11s} {r['method']:14s} {r['variant']:13s} {r['params']:10,d} {r['train_sps']:9.1f} "
              f"{rt('train_sps')} {r['eval_sps']:9.1f} {rt('eval_sps')} {r['peak_mb']:9.0f} {rt('peak_mb')}")
    for s in skipped:
        print(f"skipped: {s}")
    heads = []
    for dataset in ns.datasets:
        by = {r["variant"]: r["train_sps"] for r in rows if r["method"] == "hard_sharing" and r["dataset"] == dataset}
        if "fp32" in by and len(by) > 1:
            heads.append(f"{dataset} " + ", ".join(f"{v} {x / by['fp32']:.2f}x" for v, x in by.items() if v != "fp32"))
    if heads:
        print(f"hard_sharing training samples/s vs fp32: {'; '.join(heads)}")
    return 0
