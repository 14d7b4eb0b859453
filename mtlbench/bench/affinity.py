"""``python -m mtlbench bench affinity``: TAG lookahead affinity from ONE multi-task run vs
trained pair networks (issue 9, item 4), on the first ``--tasks`` tasks of a dataset.

Ground truth (Standley et al., ICML 2020, reference code tstandley/taskgrouping): every
single-task and every pair network is an ordinary cached run made by the ``standley``
procedure's own ``CandidatePool`` (``methods/standley_candidates.py``: ``role: candidate``,
hard sharing, equal weights; the protocol of ``method=standley`` with ``dataset.tasks`` set to
the N tasks by name, ``dataset.limit=null`` and ``trainer.epochs=--epochs``), so a second call,
or a ``method=standley`` run of the same protocol, reuses them. Per ordered pair the benefit to
task i of sharing with j is ``B[i, j] = (L_i − L_{i|j}) / L_i`` with ``L_i`` task i's val loss
alone and ``L_{i|j}`` its val loss in the network trained on {i, j} (> 0: j helps i).

Estimate (Fifty et al., NeurIPS 2021, reference code google-research/google-research ``tag/``):
one hard-sharing run over the N tasks (same data config, trainer, balancer and epochs) with
``mtlbench.grouping.affinity.tag_affinity``, called as ``methods/tag_grouping.py`` calls it (its
procedure defaults for ``every`` / ``lookahead_lr`` / probes); ``A[i, j] = Z_{j→i}`` (a step on
j lowers i's loss), the quantity compared with ``B[i, j]``.

Printed: Spearman and Pearson correlation (``scipy.stats``) over the N(N−1) off-diagonal
entries, the fraction of pairs with the same sign, the top-k hit rate (is task i's best
partner by TAG among its top-k partners by trained pairs; chance = k / (N − 1)), the wall
time of each way (pairs: the recorded training time of the singles + pairs, cached ones
included; TAG: its one run) and their ratio; then the groups each way selects under budget
N/2 with ``mtlbench.grouping.selection`` (``hoa_table`` + ``select``) and the sum of val losses of each
selection scored with the trained singles / pairs (HOA: a group's loss for i is the mean of
``L_{i|j}`` over its other members). With several ``--seeds`` the matrices are averaged.

Caveat: on per-task split data (landmine, school) a task's rows are split by one RNG running
over the selected tasks in order, so a task's val rows can differ between its single and
pair runs (and the features are standardised on the group's training rows); the ground
truth then carries that noise as well as the training noise.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from importlib import resources
from typing import Dict, List, Optional, Sequence

import numpy as np

TAG_KEYS = ("every", "lookahead_lr", "probe_per_task", "probe_size", "lookahead")


def _compose(overrides: Dict[str, str]) -> dict:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("mtlbench.conf", version_base=None):
        cfg = compose("config", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return OmegaConf.to_container(cfg, resolve=True)


def _parse_overrides(extra: Sequence[str]) -> Dict[str, str]:
    out = {}
    for o in extra:
        if "=" not in o:
            raise ValueError(f"bench affinity: extra arguments must be config overrides key=value (got {o!r})")
        k, v = o.split("=", 1)
        out[k] = v
    return out


def tag_defaults() -> dict:
    from omegaconf import OmegaConf

    node = OmegaConf.create((resources.files("mtlbench.conf") / "procedure" / "tag_grouping.yaml").read_text())
    return {k: node[k] for k in TAG_KEYS}


def protocol(dataset: str, n_tasks: int, seed: int, epochs: int, data_root: str, results_dir: str,
             extra: Optional[Dict[str, str]] = None) -> dict:
    """The composed ``method=standley`` config over the first ``n_tasks`` tasks (named)."""
    from mtlbench.engine.run import build_data

    base = {"method": "standley", "dataset": dataset, "data_root": data_root, "results_dir": results_dir,
            "seed": str(seed), "trainer.epochs": str(epochs), "trainer.progress": "false",
            "dataset.limit": "null", **(extra or {})}
    c = _compose(base)
    probe = dict(c["dataset"], tasks=None, limit=None)
    if "max_tasks" in probe:
        probe["max_tasks"] = n_tasks
    names = build_data(probe, c["data_root"]).task_names[:n_tasks]
    if len(names) < n_tasks:
        raise ValueError(f"bench affinity: dataset '{dataset}' has {len(names)} tasks; set --tasks <= {len(names)}")
    return _compose({**base, "dataset.tasks": "[" + ",".join(names) + "]", **(extra or {})})


def trained_pairs(cfg: dict, say) -> dict:
    """Single and pair candidates via the standley ``CandidatePool`` (cached runs)."""
    from mtlbench.engine.run import child_context
    from mtlbench.methods.standley.candidates import CandidatePool, score_of

    tasks = list(cfg["dataset"]["tasks"])
    n = len(tasks)
    pool = CandidatePool(child_context(cfg, say), "hard_sharing")
    loss = ("loss", "auto")
    t0 = time.perf_counter()
    single, pair = np.zeros(n), np.full((n, n), np.nan)
    times = {"single": 0.0, "pair": 0.0}
    for i, t in enumerate(tasks):
        rec = pool.get((t,))
        single[i] = score_of(rec, t, "val", loss)
        times["single"] += float(rec.get("train_time_s") or 0.0)
    for i, j in itertools.combinations(range(n), 2):
        rec = pool.get((tasks[i], tasks[j]))
        pair[i, j] = score_of(rec, tasks[i], "val", loss)
        pair[j, i] = score_of(rec, tasks[j], "val", loss)
        times["pair"] += float(rec.get("train_time_s") or 0.0)
    return {"single": single, "pair": pair, "train_time_s": times, "trained": len(pool.trained),
            "reused": len(pool.reused), "elapsed_s": time.perf_counter() - t0}


def tag_run(cfg: dict, settings: dict) -> dict:
    """One hard-sharing run over every task of ``cfg`` recording Z (as ``tag_grouping`` does)."""
    import torch

    from mtlbench.grouping.affinity import tag_affinity
    from mtlbench.backbones.base import build_backbone
    from mtlbench.core.registry import ARCHS, BALANCERS
    from mtlbench.engine.run import build_data, seed_everything
    from mtlbench.engine.trainer import Trainer

    seed = int(cfg["seed"])
    seed_everything(seed)
    data = build_data(cfg["dataset"], cfg["data_root"])
    trainer = Trainer(**{**cfg["trainer"], "progress": False})
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone(cfg["backbone"], data.input_shape), data.tasks)
    bal = {k: v for k, v in cfg["balancer"].items() if k != "name"}
    balancer = BALANCERS.get(cfg["balancer"]["name"])(data.task_names, **bal)
    z = tag_affinity(model, balancer, data, trainer, seed, int(settings["every"]),
                     float(settings["lookahead_lr"]), int(settings["probe_per_task"]), int(settings["probe_size"]),
                     lookahead=str(settings.get("lookahead", "optimizer")))
    return {"z": z, "time_s": time.perf_counter() - t0}


def compare(benefit: np.ndarray, affinity: np.ndarray, top_k: int = 2) -> dict:
    """Agreement of ``affinity[i, j]`` (TAG, Z_{j→i}) with ``benefit[i, j]`` (trained pairs)."""
    import warnings

    from scipy import stats

    n = len(benefit)
    off = ~np.eye(n, dtype=bool)
    b, a = benefit[off], affinity[off]
    ok = np.isfinite(a) & np.isfinite(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(a[ok], b[ok])[0]) if ok.sum() > 2 else float("nan")
        r = float(stats.pearsonr(a[ok], b[ok])[0]) if ok.sum() > 2 else float("nan")
    rows = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        by_b = sorted(others, key=lambda j: -benefit[i, j])
        best_a = max(others, key=lambda j: affinity[i, j] if np.isfinite(affinity[i, j]) else -np.inf)
        rows.append({"task": i, "best_tag": best_a, "top_trained": by_b[:top_k],
                     "hit": best_a in by_b[:top_k], "top1": best_a == by_b[0]})
    return {"spearman": rho, "pearson": r, "n_pairs": int(ok.sum()),
            "sign_agreement": float(np.mean(np.sign(a[ok]) == np.sign(b[ok]))) if ok.any() else float("nan"),
            "top_k": top_k, "top_k_hit": float(np.mean([x["hit"] for x in rows])),
            "top1_hit": float(np.mean([x["top1"] for x in rows])), "chance": min(1.0, top_k / max(1, n - 1)),
            "per_task": rows}


def _groups(pair: np.ndarray, seed: int) -> List[tuple]:
    from mtlbench.grouping.affinity import with_singletons
    from mtlbench.grouping.selection import candidate_groups

    n = len(pair)
    if n <= 5:  # every subset, as the standley procedure does up to max_exhaustive = 5
        return [g for r in range(1, n + 1) for g in itertools.combinations(range(n), r)]
    return with_singletons(candidate_groups(pair, max_size=min(4, n), n_candidates=64, seed=seed), n)


def hoa_loss(single: np.ndarray, pair: np.ndarray, group: Sequence[int], i: int) -> float:
    others = [j for j in group if j != i]
    return float(single[i]) if not others else float(np.mean([pair[i, j] for j in others]))


def grouping(tasks: List[str], single: np.ndarray, pair: np.ndarray, z: np.ndarray, budget: float,
             seed: int = 0) -> dict:
    """The selection each way under ``budget`` and its val-loss total scored by trained pairs."""
    from mtlbench.grouping.affinity import grouping_scores
    from mtlbench.grouping.selection import GroupingError, hoa_table, select

    out = {}
    t_single, t_pair = grouping_scores(z)
    for way, (s, p) in {"trained": (single, pair), "tag": (t_single, t_pair)}.items():
        groups = _groups(p, seed)
        table = hoa_table(tasks, s, p, groups)
        try:
            sel = select(table, budget)
        except GroupingError as exc:
            out[way] = {"error": str(exc)}
            continue
        members = {name: g for name, g in zip(table.networks, groups)}
        total = sum(hoa_loss(single, pair, members[sel.assignment[t]], i) for i, t in enumerate(tasks))
        out[way] = {"networks": list(sel.networks), "cost": float(sel.cost), "val_loss_total": total}
    out["singles"] = {"networks": list(tasks), "cost": float(len(tasks)), "val_loss_total": float(single.sum())}
    return out


def run_bench(dataset: str = "landmine", n_tasks: int = 8, seeds: Sequence[int] = (0,), epochs: int = 10,
              data_root: str = "../shared/data", results_dir: str = "results", extra: Optional[Dict[str, str]] = None,
              top_k: int = 2, tag: Optional[dict] = None, say=None) -> dict:
    if n_tasks < 3:
        raise ValueError(f"bench affinity: --tasks must be >= 3 (got {n_tasks})")
    settings = {**tag_defaults(), **(tag or {})}
    say = say or (lambda m: None)
    bens, zs, singles, pairs = [], [], [], []
    times = {"single": 0.0, "pair": 0.0, "tag": 0.0, "pairs_elapsed": 0.0}
    counts = {"trained": 0, "reused": 0}
    tasks: List[str] = []
    for seed in seeds:
        cfg = protocol(dataset, n_tasks, seed, epochs, data_root, results_dir, extra)
        tasks = list(cfg["dataset"]["tasks"])
        gt = trained_pairs(cfg, say)
        est = tag_run(cfg, settings)
        single, pair = gt["single"], gt["pair"]
        bens.append((single[:, None] - pair) / single[:, None])
        zs.append(est["z"])
        singles.append(single), pairs.append(pair)
        times["single"] += gt["train_time_s"]["single"]
        times["pair"] += gt["train_time_s"]["pair"]
        times["pairs_elapsed"] += gt["elapsed_s"]
        times["tag"] += est["time_s"]
        counts["trained"] += gt["trained"]
        counts["reused"] += gt["reused"]
    benefit, z = np.mean(bens, axis=0), np.mean(zs, axis=0)
    affinity = z.T.copy()  # affinity[i, j] = Z_{j→i}
    single, pair = np.mean(singles, axis=0), np.mean(pairs, axis=0)
    out = {"dataset": dataset, "tasks": tasks, "seeds": list(seeds), "epochs": epochs, "tag_settings": settings,
           "benefit": benefit, "affinity": affinity, "single": single, "pair": pair, "candidates": counts,
           **compare(benefit, affinity, top_k)}
    pairs_time = times["single"] + times["pair"]
    out["time_s"] = {**times, "pairs_total": pairs_time,
                     "ratio": pairs_time / times["tag"] if times["tag"] > 0 else float("nan")}
    out["budget"] = len(tasks) / 2
    out["grouping"] = grouping(tasks, single, pair, z, out["budget"], int(seeds[0]))
    return out


def report(r: dict) -> str:
    tasks, n = r["tasks"], len(r["tasks"])
    t = r["time_s"]
    lines = [f"{r['dataset']}: {n} tasks ({', '.join(tasks)}), seeds {r['seeds']}, {r['epochs']} epochs; "
             f"TAG every={r['tag_settings']['every']} lookahead_lr={r['tag_settings']['lookahead_lr']}",
             f"candidates: {r['candidates']['trained']} trained, {r['candidates']['reused']} cached",
             f"pairs compared: {r['n_pairs']} ordered (TAG Z[j->i] vs trained benefit (L_i - L_i|j) / L_i, val loss)",
             f"spearman: {r['spearman']:.3f}",
             f"pearson: {r['pearson']:.3f}",
             f"sign agreement: {r['sign_agreement']:.3f}",
             f"top-{r['top_k']} hit (TAG best partner in trained top-{r['top_k']}): {r['top_k_hit']:.3f} "
             f"(top-1 {r['top1_hit']:.3f}; chance {r['chance']:.3f})", "",
             f"{'task':10s} {'TAG best':10s} {'trained top-' + str(r['top_k']):22s} {'hit':>4s} "
             f"{'B[i,TAG best]':>14s} {'B[i,trained best]':>18s}"]
    for row in r["per_task"]:
        i, a, top = row["task"], row["best_tag"], row["top_trained"]
        lines.append(f"{tasks[i]:10s} {tasks[a]:10s} {','.join(tasks[j] for j in top):22s} "
                     f"{'yes' if row['hit'] else 'no':>4s} {r['benefit'][i, a]:14.4f} {r['benefit'][i, top[0]]:18.4f}")
    lines += ["", f"wall time, trained pairs ({n} singles + {n * (n - 1) // 2} pairs, recorded training): "
              f"{t['pairs_total']:.1f}s (singles {t['single']:.1f}s, pairs {t['pair']:.1f}s; "
              f"this call {t['pairs_elapsed']:.1f}s)",
              f"wall time, TAG (one {n}-task run): {t['tag']:.2f}s",
              f"wall time ratio pairs / TAG: {t['ratio']:.2f}", "",
              f"grouping under budget {r['budget']:g} (val loss total scored with trained singles/pairs, HOA):"]
    for way, g in r["grouping"].items():
        if "error" in g:
            lines.append(f"  {way:8s} infeasible: {g['error']}")
        else:
            lines.append(f"  {way:8s} cost {g['cost']:4g}  val loss total {g['val_loss_total']:.4f}  "
                         f"{' | '.join(g['networks'])}")
    return "\n".join(lines)


def main(args: List[str]) -> int:
    from hydra.errors import HydraException

    from mtlbench.core.data import DataError

    p = argparse.ArgumentParser(prog="python -m mtlbench bench affinity",
                                description="TAG lookahead affinity (one run) vs trained pair networks",
                                epilog="extra key=value arguments are config overrides, e.g. profile=tiny")
    p.add_argument("--dataset", default="landmine")
    p.add_argument("--tasks", type=int, default=None,
                   help="the first N tasks (N singles + N(N-1)/2 pairs; default 5, --full 8)")
    p.add_argument("--seeds", default="0", help="comma-separated; matrices averaged over seeds")
    p.add_argument("--epochs", type=int, default=None, help="default 5, --full 10")
    p.add_argument("--full", action="store_true", help="the long version: 8 tasks, 10 epochs (many minutes)")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--results-dir", default="results", help="results store: candidates are cached there")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--every", type=int, default=None, help="TAG: affinity every k steps (default: tag_grouping's)")
    p.add_argument("--lookahead-lr", type=float, default=None, help="TAG: lookahead step (default: tag_grouping's)")
    p.add_argument("--quiet", action="store_true", help="no line per candidate")
    ns, extra = p.parse_known_args(args)
    ns.tasks = ns.tasks or (8 if ns.full else 5)
    ns.epochs = ns.epochs or (10 if ns.full else 5)
    try:
        try:
            seeds = [int(s) for s in ns.seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"bench affinity: --seeds must be comma-separated integers (got {ns.seeds!r})") from None
        if not seeds or ns.epochs < 1 or ns.top_k < 1:
            raise ValueError("bench affinity: need at least one seed, --epochs >= 1 and --top-k >= 1")
        tag = {k: v for k, v in (("every", ns.every), ("lookahead_lr", ns.lookahead_lr)) if v is not None}
        say = None if ns.quiet else (lambda m: print("[affinity]", m, flush=True))
        r = run_bench(ns.dataset, ns.tasks, seeds, ns.epochs, ns.data_root, ns.results_dir,
                      _parse_overrides(extra), ns.top_k, tag, say)
    except (ValueError, DataError, RuntimeError, HydraException) as exc:  # one line, as cli.fail prints (GroupingError is a ValueError)
        print(f"mtlbench: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr, flush=True)
        return 2
    print(report(r), flush=True)
    print(f"TAG vs trained pairs: spearman {r['spearman']:.3f}; wall time ratio pairs / TAG "
          f"{r['time_s']['ratio']:.2f}x", flush=True)
    return 0


__all__ = ["run_bench", "compare", "grouping", "report", "main", "protocol", "trained_pairs", "tag_run"]
