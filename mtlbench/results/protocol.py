"""Which runs a report may compare: completed, main-role, full task set, one training protocol.

A table only compares runs trained under one **protocol**: backbone (name and width),
epochs and steps per epoch, optimizer, learning rate, weight decay, scheduler, batch size,
model selection and data budget (train / val / test sizes, ``dataset.limit``, split seed),
read from each run folder's ``config.yaml`` and ``run.json``. The reference protocol is
the one most of the baseline's runs used (of all runs when there is no baseline); runs of
any method under another protocol are never averaged in: they are left out with a note
naming how their protocol differs. Also left out, each with a note: failed or unfinished
runs, task-grouping candidates (``role: candidate``), runs on a task subset (tasks other
than the baseline's), older duplicates of a (method, seed) pair (``force=true``), and,
naming the file, runs whose run.json or config.yaml cannot be read (or is not a record)
and runs with a non-finite metric (so n always counts the seeds a mean is over).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import yaml

from mtlbench.results.store import iter_runs


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def protocol_of(rec: dict, cfg: Optional[dict]) -> Dict[str, object]:
    """The protocol fields of one run (ordered; None where the run does not say)."""
    cfg = cfg or {}
    opt = _get(cfg, "trainer.optimizer") or {}
    sched = _get(cfg, "trainer.scheduler")
    sizes = rec.get("data_sizes") or {}
    backbone = rec.get("backbone") or _get(cfg, "backbone.name")
    width = _get(cfg, "backbone.width")
    return {
        "backbone": f"{backbone} (width {width})" if width is not None else backbone,
        "epochs": _get(cfg, "trainer.epochs") if cfg else rec.get("epochs"),
        "steps/epoch": _get(cfg, "trainer.max_steps_per_epoch") or "all",
        "optimizer": str(opt.get("_target_", "")).rsplit(".", 1)[-1] or None,
        "lr": opt.get("lr"),
        "weight decay": opt.get("weight_decay"),
        "scheduler": (str(sched.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(sched, dict) else sched),
        "batch size": _get(cfg, "trainer.batch_size"),
        "selection": _selection(rec, cfg),
        "data (train/val/test)": "/".join(str(sizes.get(k, "?")) for k in ("train", "val", "test")),
        "limit": _get(cfg, "dataset.limit"),
        # tabular protocols resample the split with every seed (dataset.split_seed=${seed}):
        # that is one protocol, not one per seed
        "split seed": ("= seed" if _split_follows_seed(cfg, rec) else _get(cfg, "dataset.split_seed")),
    }


def _selection(rec: dict, cfg: dict):
    """The run's model selection; ``last_k_mean`` with its k (a different k is another protocol)."""
    sel = rec.get("selection") or {}
    mode = sel.get("mode") or _get(cfg, "trainer.selection")
    if mode == "last_k_mean":
        return f"last_k_mean (k={sel.get('k') or _get(cfg, 'trainer.selection_k')})"
    return mode


def _split_follows_seed(cfg: dict, rec: dict) -> bool:
    """True when the run's split seed is its seed because its dataset's packaged config says
    ``split_seed: ${seed}`` (School, Landmine, ...: a new random split per seed)."""
    name, split_seed = _get(cfg, "dataset.name"), _get(cfg, "dataset.split_seed")
    if name is None or split_seed is None or split_seed != rec.get("seed", _get(cfg, "seed")):
        return False
    try:
        from importlib import resources

        from omegaconf import OmegaConf

        raw = OmegaConf.create(resources.files("mtlbench.conf").joinpath(f"dataset/{name}.yaml").read_text())
        return OmegaConf.to_container(raw, resolve=False).get("dataset", {}).get("split_seed") == "${seed}"
    except Exception:  # a plugin dataset or an unreadable config: keep the plain value
        return False


def with_budget(p: Dict[str, object], recs: List[dict]) -> Dict[str, object]:
    """The protocol as it ran: steps per epoch and samples seen from run.json ``budget``
    (runs written before it existed show the configured cap only)."""
    ran = sorted({int(s) for r in recs for s in ((r.get("budget") or {}).get("steps_per_epoch") or [])})
    if not ran:
        return p
    out, cap = dict(p), p.get("steps/epoch")
    shown = str(ran[0]) if len(ran) == 1 else f"{ran[0]}-{ran[-1]}"
    out["steps/epoch"] = f"{shown} (cap {cap})" if cap not in (None, "all") and str(cap) != shown else shown
    seen = sorted({int((r.get("budget") or {}).get("samples_seen") or 0) for r in recs} - {0})
    if seen:
        out["samples seen"] = f"{seen[0]:,}" if len(seen) == 1 else f"{seen[0]:,}-{seen[-1]:,}"
    return out


def protocol_label(p: Dict[str, object]) -> str:
    return "; ".join(f"{k} {v}" for k, v in p.items() if v is not None)


def protocol_diff(p: Dict[str, object], ref: Dict[str, object]) -> str:
    return ", ".join(f"{k} {p.get(k)} vs {v}" for k, v in ref.items() if p.get(k) != v)


def _config(path: Path) -> Tuple[Optional[dict], Optional[str]]:
    """(the run's config.yaml, None); (None, None) when it has none (runs of older
    versions); (None, why) when it is unreadable or not a mapping."""
    f = Path(path) / "config.yaml"
    if not f.is_file():
        return None, None
    try:
        cfg = yaml.safe_load(f.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, f"{f} ({type(exc).__name__})"
    return (cfg, None) if isinstance(cfg, dict) else (None, f"{f} (not a mapping)")


def shorten(text: str, width: int = 80) -> str:
    """``text`` on one line, cut at a word boundary (never mid-word) with '…' when longer."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[:width + 1].rsplit(" ", 1)[0] if " " in text[:width + 1] else text[:width]
    return cut.rstrip() + "…"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class RunSet:
    """The runs one report compares.

    ``runs``: one row per kept run (method, seed, run_id, path, params, flops, wall_time_s,
    finished_at); ``values``: index (method, seed), columns (task, metric) for ``split``;
    ``higher_is_better``: {task: {metric: bool}}; ``protocol``: the reference protocol."""
    dataset: str
    tasks: List[str]
    runs: pd.DataFrame
    values: pd.DataFrame
    higher_is_better: Dict[str, Dict[str, bool]]
    protocol: Dict[str, object]
    notes: List[str] = field(default_factory=list)


def datasets_in(results_dir, completed: bool = True) -> List[str]:
    """Datasets with at least one completed main run (``completed=False``: with any run)."""
    return sorted({rec.get("dataset") for _, rec in iter_runs(results_dir, []) if rec.get("dataset") and (
        not completed or (rec.get("status") == "completed" and (rec.get("role") or "main") == "main"))})


def collect(results_dir, dataset: str, baseline: str = "stl", methods: Optional[Sequence[str]] = None,
            split: str = "test", metrics: Optional[Sequence[str]] = None) -> RunSet:
    """Select the comparable runs of ``dataset`` (see the module docstring); never raises on
    partial results: what is left out is said in ``RunSet.notes``."""
    notes: List[str] = []
    problems: list = []
    recs = [(p, r) for p, r in iter_runs(results_dir, problems) if r.get("dataset") == dataset]
    unreadable = [(p, why) for p, why in problems if p.parent.parent.name == dataset]
    if unreadable:
        notes.append(f"{len(unreadable)} unreadable run file(s) left out (rerun those runs): "
                     + "; ".join(f"{p / 'run.json'} ({shorten(why, 60)})" for p, why in unreadable))
    bad = [(p, r) for p, r in recs if r.get("status") != "completed"]
    if bad:
        what = ", ".join(f"{r.get('method')} seed {r.get('seed')} ({r.get('status')}"
                         f"{': ' + shorten(r.get('reason'), 60) if r.get('reason') else ''})" for _, r in bad)
        notes.append(f"{len(bad)} failed or unfinished run(s) left out: {what}")
    recs = [(p, r) for p, r in recs if r.get("status") == "completed"]
    pending = sorted(d for d in Path(results_dir, dataset).glob("*/*") if d.is_dir() and not (d / "run.json").exists())
    if pending:
        notes.append(f"{len(pending)} run folder(s) without run.json (still running, or killed) left out: "
                     + ", ".join(f"{d.parent.name}/{d.name}" for d in pending))
    cand = [r for _, r in recs if (r.get("role") or "main") != "main"]
    if cand:
        notes.append(f"{len(cand)} task-grouping candidate run(s) (role '{cand[0].get('role')}') left out")
    recs = [(p, r) for p, r in recs if (r.get("role") or "main") == "main"]
    if methods:
        wanted = list(dict.fromkeys([baseline, *methods]))
        missing = [m for m in wanted if m not in {r.get("method") for _, r in recs}]
        if missing:
            notes.append(f"no completed runs of {', '.join(missing)} on {dataset}")
        recs = [(p, r) for p, r in recs if r.get("method") in wanted]
    if not any(r.get("method") == baseline for _, r in recs):
        notes.append(f"no completed '{baseline}' runs for {dataset}: no Δ, no significance tests "
                     f"(run `python -m mtlbench run method={baseline} dataset={dataset}` with the same seeds "
                     f"and protocol)")

    # full task set: the baseline's (most common), else the most common overall
    pool = [r for _, r in recs if r.get("method") == baseline] or [r for _, r in recs]
    counts = Counter(tuple(r.get("tasks") or sorted((r.get("metrics") or {}).get(split, {}))) for r in pool)
    tasks = list(max(counts, key=lambda k: (counts[k], len(k)))) if counts else []
    sub = [r for _, r in recs if tuple(r.get("tasks") or sorted((r.get("metrics") or {}).get(split, {})))
           != tuple(tasks)]
    if sub:
        notes.append(f"{len(sub)} run(s) on another task set than {tasks} left out: "
                     + ", ".join(sorted({f"{r.get('method')} {r.get('tasks')}" for r in sub})))
    recs = [(p, r) for p, r in recs if tuple(r.get("tasks") or sorted((r.get("metrics") or {}).get(split, {})))
            == tuple(tasks)]

    # one protocol (a run whose config.yaml cannot be read has no known protocol: left out)
    configs = {p: _config(p) for p, _ in recs}
    garbled = [why for p, (_, why) in configs.items() if why]
    if garbled:
        notes.append(f"{len(garbled)} run(s) with an unreadable config.yaml left out (protocol unknown): "
                     + "; ".join(garbled))
    recs = [(p, r) for p, r in recs if not configs[p][1]]
    protos = [(p, r, protocol_of(r, configs[p][0])) for p, r in recs]
    keyed = [protocol_label(pr) for _, _, pr in protos]
    base_keys = [k for k, (_, r, _) in zip(keyed, protos) if r.get("method") == baseline] or keyed
    ref_key = None
    if base_keys:
        c = Counter(base_keys)
        last = {k: max(str(r.get("finished_at")) for kk, (_, r, _) in zip(keyed, protos) if kk == k) for k in c}
        ref_key = max(c, key=lambda k: (c[k], last[k]))
    ref = next((pr for k, (_, _, pr) in zip(keyed, protos) if k == ref_key), {})
    other = [(r, pr) for k, (_, r, pr) in zip(keyed, protos) if k != ref_key]
    if other:
        by = Counter((r.get("method"), protocol_diff(pr, ref)) for r, pr in other)
        notes.append(f"{len(other)} run(s) trained under another protocol left out (never averaged with the "
                     f"table's protocol): " + "; ".join(f"{m} x{n} ({d})" for (m, d), n in sorted(by.items())))
    kept = [(p, r) for k, (p, r, _) in zip(keyed, protos) if k == ref_key]
    ref = with_budget(ref, [r for _, r in kept])

    rows, vals, hib = [], {}, {}
    for p, r in sorted(kept, key=lambda pr: (str(pr[1].get("finished_at")), str(pr[1].get("run_id")))):
        key = (r.get("method"), r.get("seed"))
        cells = {(t, m): v for t, ms in ((r.get("metrics") or {}).get(split) or {}).items()
                 for m, v in ms.items() if metrics is None or m in metrics}
        nonfinite = [f"{t}/{m}" for (t, m), v in cells.items() if not _finite(v)]
        if nonfinite:
            notes.append(f"{p / 'run.json'} left out: non-finite {split} metric {', '.join(nonfinite)} "
                         f"(a diverged run; no mean over fewer seeds than n)")
            continue
        if key in vals:
            notes.append(f"{key[0]} seed {key[1]} was run more than once: the most recent run is used")
            rows = [x for x in rows if (x["method"], x["seed"]) != key]
        vals[key] = cells
        for t, ms in (r.get("higher_is_better") or {}).items():
            hib.setdefault(t, {}).update({m: bool(h) for m, h in ms.items()})
        rows.append({"method": key[0], "seed": key[1], "run_id": r.get("run_id"), "path": str(p),
                     "params": (r.get("params") or {}).get("total"), "flops": (r.get("flops") or {}).get("total"),
                     "wall_time_s": r.get("wall_time_s"), "finished_at": r.get("finished_at")})
    runs = pd.DataFrame(rows, columns=["method", "seed", "run_id", "path", "params", "flops", "wall_time_s",
                                       "finished_at"])
    values = pd.DataFrame.from_dict(vals, orient="index")
    if len(values):
        values.index = pd.MultiIndex.from_tuples(values.index, names=["method", "seed"])
        order = [(t, m) for t in tasks for m in (hib.get(t) or {}) if (t, m) in values.columns]
        values = values[order + [c for c in values.columns if c not in order]].sort_index()
        values.columns = pd.MultiIndex.from_tuples(values.columns, names=["task", "metric"])
    return RunSet(dataset, tasks, runs, values, hib, ref, list(dict.fromkeys(notes)))
