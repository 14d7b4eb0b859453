"""Benchmarks: ``python -m mtlbench bench <name>``; each prints ratios, its headline last."""
from __future__ import annotations

import importlib
from typing import List

# name -> (module with ``main(args) -> int``, what it measures)
BENCHES = {
    "overhead": ("mtlbench.bench.overhead", "trainer vs a bare PyTorch loop (ratio, fixed cost per step)"),
    "balancers": ("mtlbench.bench.balancers", "step time and memory of every balancer vs equal / T backward passes"),
    "archs": ("mtlbench.bench.archs", "step time of each architecture and balancer vs hard sharing + equal"),
    "grouping": ("mtlbench.bench.grouping", "task-grouping selection: time and optimality gap vs n tasks"),
    "tabular": ("mtlbench.bench.tabular", "wall time per epoch vs number of tasks on tabular data"),
    "adashare": ("mtlbench.bench.adashare", "AdaShare search step vs hard sharing / T paths"),
    "throughput": ("mtlbench.bench.throughput", "samples/s and peak memory per method, AMP / layout variants"),
    "affinity": ("mtlbench.bench.affinity", "TAG lookahead affinity (one run) vs trained pair networks"),
    "eval": ("mtlbench.bench.eval", "dense metric updates vs a reference formulation; eval vs train throughput"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:11s} {what}" for name, (_, what) in BENCHES.items())
    return f"usage: python -m mtlbench bench <name> [options]   (<name> --help for its options)\n{rows}"


def main(args: List[str]) -> int:
    from mtlbench.cli.commands import fail

    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] not in BENCHES:
        return fail(f"unknown benchmark '{args[0]}'; benchmarks: {', '.join(BENCHES)}")
    return importlib.import_module(BENCHES[args[0]][0]).main(args[1:])
