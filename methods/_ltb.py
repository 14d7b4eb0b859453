"""Learning to Branch: the tree a parent table describes, and what a derived tree costs. Used by
``methods/ltb.py`` (architecture and procedure); not a registered method.

A tree is a parent table ``tree[l][k]`` (ints, [L, T]): node k of block l reads the output of
node ``tree[l][k]`` of block l − 1 (of stem ``tree[0][k]`` for block 0). Task t is served by
node t of the last block, so its path (chain) is followed from the top down; nodes on no
task's chain are pruned from the deployed network.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from mtlbench.core.model import count_flops


def chain(tree: Sequence[Sequence[int]], t: int) -> List[int]:
    """Task t's node index per level: [stem, block 0, ..., block L−1]."""
    L = len(tree)
    nodes = [0] * (L + 1)
    k = t
    for l in range(L - 1, -1, -1):
        nodes[l + 1] = k
        k = int(tree[l][k])
    nodes[0] = k
    return nodes


def groups(tree: Sequence[Sequence[int]], tasks: Sequence[str]) -> List[List[List[str]]]:
    """Per level (stem, block 0, ...), the tasks grouped by the node that serves them (node order)."""
    chains = [chain(tree, t) for t in range(len(tasks))]
    out = []
    for level in range(len(tree) + 1):
        by_node: Dict[int, List[str]] = {}
        for t, c in enumerate(chains):
            by_node.setdefault(c[level], []).append(tasks[t])
        out.append([by_node[k] for k in sorted(by_node)])
    return out


def shared_levels(tree: Sequence[Sequence[int]], tasks: Sequence[str]) -> Dict[str, int]:
    """For each task pair "a|b": how many levels (stem included) their paths share (0 = none:
    separate networks; L + 1 would be one path, impossible as each task has its own top node)."""
    chains = [chain(tree, t) for t in range(len(tasks))]
    out = {}
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            out[f"{tasks[i]}|{tasks[j]}"] = sum(1 for a, b in zip(chains[i], chains[j]) if a == b)
    return out


def describe(tree, tasks: Sequence[str]) -> str:
    """One line: per level the task groups, e.g. ``stem {a,b} | b0 {a,b} | b1 {a} {b}``."""
    names = ["stem"] + [f"b{l}" for l in range(len(tree))]
    return " | ".join(f"{n} " + " ".join("{" + ",".join(g) + "}" for g in gs)
                      for n, gs in zip(names, groups(tree, tasks)))


def _n(params) -> int:
    return sum(p.numel() for p in params)


def costs(model, input_shape, trained: int):
    """(params, flops) of a model in fixed mode: ``params.total`` = deployed (stems, nodes on a
    task's chain, heads; each once), ``trained`` = everything the search allocated (T columns,
    branching logits), ``per_task`` = each task's path; ``flops.total`` = the deployed
    multi-task forward (shared nodes computed once), ``per_task`` = each path alone,
    ``independent`` = T full columns (every level separate)."""
    device = next(model.parameters()).device
    tree = model.tree.clone()
    params = {"total": _n(model.deployed_parameters()), "trained": int(trained),
              "per_task": {t: _n(model.task_parameters(t)) for t in model.task_names}}
    flops = count_flops(model, input_shape, device=device)
    T, L = len(model.task_names), tree.shape[0]
    model.set_tree(torch.arange(T).repeat(L, 1))
    flops["independent"] = count_flops(model, input_shape, device=device)["total"]
    model.set_tree(tree)
    return params, flops
