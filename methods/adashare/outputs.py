"""What an AdaShare run reports besides its metrics: deployed vs trained parameters, FLOPs of
the deployed model and of each task's path next to hard sharing, and the policy heatmap.
Used by the ``adashare`` procedure (``methods/adashare/procedure.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from mtlbench.core.model import count_flops

from mtlbench.methods.adashare.arch import AdaShare


def _n(params) -> int:
    return sum(p.numel() for p in params)


def costs(model: AdaShare, input_shape, trained: int) -> Tuple[dict, dict]:
    """(params, flops) of ``model`` in fixed mode (its policy), with hard sharing's beside.

    params: ``total`` = deployed (stem + blocks executed by >= 1 task + shortcut projections
    of skipped blocks + heads), ``trained`` = every parameter the search allocated (policy
    logits included), ``per_task`` = each task's deployed path, ``hard_sharing`` = backbone +
    heads. flops (one sample, ``torch.utils.flop_counter``): ``total`` = the deployed
    multi-task forward (prefixes shared by several tasks computed once), ``per_task`` =
    each task's path alone, ``hard_sharing`` = {total, per_task} with every block executed,
    ``ratio_to_hard_sharing`` = total / hard_sharing total."""
    device = next(model.parameters()).device
    policy = model.policy.clone()
    params = {"total": _n(model.deployed_parameters()), "trained": int(trained),
              "per_task": {t: _n(model.task_parameters(t)) for t in model.task_names},
              "hard_sharing": _n(model.backbone.parameters()) + _n(model.heads.parameters())}
    flops = count_flops(model, input_shape, device=device)
    model.set_mode("shared")
    hard = count_flops(model, input_shape, device=device)
    model.set_policy(policy)
    flops["hard_sharing"] = hard
    flops["ratio_to_hard_sharing"] = round(flops["total"] / hard["total"], 4) if hard["total"] else None
    flops["paper"] = paper_macs(model, input_shape, device)
    return params, flops


def _path_macs(model: AdaShare, x, row) -> int:
    """Multiply-adds of one task's backbone path (stem, executed blocks, shortcuts of skipped ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        h, state = model.backbone.stem(x), {}
        for block, ex in zip(model.backbone.blocks, row):
            h = block(h, state) if ex else block.shortcut(h)
    return int(counter.get_total_flops()) // 2  # FlopCounterMode counts a multiply-add as 2 FLOPs


def paper_macs(model: AdaShare, input_shape, device="cpu") -> dict:
    """The AdaShare paper's FLOPs figure (sunxm2357/AdaShare ``models/deeplab_resnet.py``:
    ``compute_flops`` on ``MTL2_Backbone``, printed as FLOPs / 2; ``utils/flops_benchmark.py``
    counts the convolutions): the backbone only (no heads), each task's path run and counted
    separately (no prefix shared), summed over tasks, in multiply-adds, for one sample of
    ``input_shape`` (the reference script uses 224x224); ``hard_sharing`` = the same with
    every block executed (T full backbones)."""
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), device=device)
    rows = model.policy.tolist()
    per_task = {t: _path_macs(model, x, rows[i]) for i, t in enumerate(model.task_names)}
    full = _path_macs(model, x, [True] * model.num_blocks)
    model.train(was_training)
    total = sum(per_task.values())
    return {"total": total, "per_task": per_task, "hard_sharing": full * len(per_task),
            "ratio_to_hard_sharing": round(total / (full * len(per_task)), 4) if full else None,
            "unit": "multiply-adds", "scope": "backbone only, each task's path counted separately, summed"}


def draw_heatmap(path: Path, tasks: Sequence[str], probs: List[List[float]], policy: List[List[int]]) -> str:
    """tasks x blocks heatmap of the execute probability, each cell marked with the final
    decision (E = execute, S = skip); returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, L = len(tasks), len(policy[0]) if policy else 0
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * L + 1.8), max(1.6, 0.45 * T + 1.0)))
    im = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(T):
        for j in range(L):
            ax.text(j, i, "E" if policy[i][j] else "S", ha="center", va="center", fontsize=8,
                    color="white" if probs[i][j] > 0.6 else "black")
    ax.set_xticks(range(L))
    ax.set_xticklabels([str(j) for j in range(L)], fontsize=7)
    ax.set_yticks(range(T))
    ax.set_yticklabels(list(tasks))
    ax.set_xlabel("block")
    ax.set_title("AdaShare policy (colour: P(execute); E/S: retrained policy)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path).name
