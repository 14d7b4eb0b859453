"""Standley-style task grouping (``method=standley``; Standley et al., ICML 2020, "Which Tasks
Should Be Learned Together in Multi-task Learning?"; reference code tstandley/taskgrouping).

The procedure trains candidate networks (ordinary runs, ``role: candidate``, cached in the
results store: see ``standley_candidates.py``), scores them per task on the validation
split, selects under each budget with ``mtlbench.grouping.selection.select`` and reports the chosen
networks' realised test scores. ``grouping.strategy``:

- ``os`` (the paper's optimal solution): every candidate fully trained; candidates = all
  non-empty task subsets when n_tasks <= ``max_exhaustive``, else singles + pairs + groups
  generated from the pair scores (``candidate_groups``), or ``grouping.groups``;
- ``esa`` (early-stopping approximation): the same candidates trained for ``esa_fraction``
  of the epochs; selection on those scores, realised test scores from FULLY trained runs of
  the selected networks;
- ``hoa`` (higher-order approximation): only singles and pairs are trained; a larger group's
  score on task i is the mean over the pairs {i, j} inside it (``hoa_table``); the selected
  larger groups are then trained to report realised scores.

Realised assignment: once the chosen networks are fully trained, each task is served by the
chosen network with its best FULLY TRAINED VALIDATION score, then the test scores are read
(leak-free). The paper's code (``network_selection/main.cpp``: ``translate_scores_to_test_set``
then ``score_solution``) keeps every chosen network and takes each task's minimum TEST loss
among them, for ESA, HOA and the optimal selection alike. Keeping the early-stopped table's
own assignment (mtlbench before) is worse than the paper's ESA curves on its published tables
in 26 of 36 (setting, budget) cells, by up to 0.0235 total loss; assigned by the fully trained
validation losses, 34 of the 36 cells equal the paper's (``tests/test_standley_fidelity.py``
names the other two). For ``os`` the full validation scores are the selection's, so nothing
changes.
``grouping.json`` keeps the selection's assignment (``selection_assignment``) beside the
realised one (``assignment``).

Scores: ``grouping.metric`` = loss (run.json ``losses.val[task]``, default), ``primary`` (each
task's first metric) or a metric name / {task: metric}, negated when higher is better.
Costs: full network 1, half-size single 0.5 (``half_singles``; sized by measured FLOPs to
0.5 ± 0.05 of the full network, ``half.py``; the measured ratios are in ``grouping.json``
``half_networks``).

The run itself is a main run over the full task set: its metrics are each task's test/val
metrics from its network at ``report_budget``; ``params`` / ``flops`` are the sums over the
chosen networks (per task: the serving network's). Outputs in the run folder:
``grouping.json``, ``grouping.csv``/``grouping.md`` and ``grouping.png`` (see
``standley_outputs.py``).
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Tuple

import numpy as np

from mtlbench.grouping.selection import GroupingError, ScoreTable, candidate_groups, hoa_table, select
from mtlbench.grouping.search import min_cover_cost
from mtlbench.core.procedure import FitResult, Procedure, ProcedureResult
from mtlbench.core.registry import PROCEDURES
from mtlbench.results.stats import delta_t

from mtlbench.methods.standley.candidates import CandidatePool, all_groups, network_name, parse_metric, score_of
from mtlbench.methods.standley.outputs import build_container, write_outputs

DEFAULTS = {"strategy": "hoa", "budget": "auto", "report_budget": None, "esa_fraction": 0.25,
            "half_singles": True, "arch": "hard_sharing", "metric": "loss", "direction": "auto",
            "max_exhaustive": 5, "max_group_size": 4, "n_candidates": 64, "groups": None,
            "realise": "all", "method": "auto"}


def settings(cfg: dict, tasks: List[str]) -> dict:
    g = {**DEFAULTS, **(cfg.get("grouping") or {})}
    if g["strategy"] not in ("os", "esa", "hoa"):
        raise ValueError(f"grouping.strategy must be os, esa or hoa (got {g['strategy']!r})")
    if g["realise"] not in ("all", "report", "none"):
        raise ValueError(f"grouping.realise must be all, report or none (got {g['realise']!r})")
    if not 0 < float(g["esa_fraction"]) <= 1:
        raise ValueError(f"grouping.esa_fraction must be in (0, 1] (got {g['esa_fraction']})")
    n = len(tasks)
    step = 0.5 if g["half_singles"] else 1.0
    if g["budget"] in ("auto", None):
        budgets = [float(b) for b in np.arange(1.0, n + step / 2, step)]
    else:
        raw = g["budget"] if isinstance(g["budget"], (list, tuple)) else [g["budget"]]
        try:
            budgets = sorted({float(b) for b in raw})
        except (TypeError, ValueError):
            raise ValueError(f"grouping.budget must be auto, a number or a list of numbers (got {g['budget']!r})") \
                from None
    rb = g["report_budget"]
    rb = float(math.ceil(n / 2)) if rb is None else float(rb)
    if rb not in budgets:
        budgets = sorted(budgets + [rb])
    g["budgets"], g["report_budget"] = budgets, rb
    if g["groups"] is not None:
        groups = [tuple(x) for x in g["groups"]]
        bad = [x for grp in groups for x in grp if x not in tasks]
        if bad:
            raise ValueError(f"grouping.groups names unknown task '{bad[0]}'; tasks: {', '.join(tasks)}")
        g["groups"] = groups
    return g


def _pair_matrix(tasks, score) -> np.ndarray:
    n = len(tasks)
    P = np.full((n, n), np.nan)
    for i, t in enumerate(tasks):
        P[i, i] = score((t,), t)
        for j, u in enumerate(tasks):
            if i != j:
                P[i, j] = score(tuple(sorted((t, u), key=tasks.index)), t)
    return P


@PROCEDURES.register("standley")
class Standley(Procedure):
    def __init__(self, **kwargs):
        if kwargs:
            raise ValueError(f"procedure standley takes its settings from the grouping: node (got {sorted(kwargs)})")

    def __call__(self, ctx) -> ProcedureResult:
        t_start = time.perf_counter()
        tasks = list(ctx.data.task_names)
        if len(tasks) < 2:
            raise ValueError(f"method=standley needs a dataset with >= 2 tasks (got {tasks}); "
                             f"set dataset.tasks to at least two tasks")
        g = settings(ctx.cfg, tasks)
        metric = parse_metric(g, tasks)
        pool = CandidatePool(ctx, g["arch"])
        order = lambda grp: tuple(sorted(grp, key=tasks.index))  # noqa: E731
        full: Dict[str, dict] = {}
        groups_of: Dict[str, Tuple[tuple, bool]] = {}

        def full_rec(grp, half=False):
            name = network_name(grp, half)
            groups_of[name] = (tuple(grp), half)
            if name not in full:
                full[name] = pool.get(grp, half=half)
            return full[name]

        # baselines (always full): single-task networks and the all-in-one network
        for t in tasks:
            full_rec((t,))
        full_rec(tuple(tasks))
        halves = [(t,) for t in tasks] if g["half_singles"] else []
        strategy = g["strategy"]
        esa = strategy == "esa"
        short: Dict[str, dict] = {}

        def scored_rec(grp, half=False):  # the record whose val scores the selection uses
            if not esa:
                return full_rec(grp, half)
            name = network_name(grp, half)
            groups_of[name] = (tuple(grp), half)
            if name not in short:
                short[name] = pool.get(grp, half=half, epoch_fraction=float(g["esa_fraction"]))
            return short[name]

        def val(grp, task, half=False):
            return score_of(scored_rec(grp, half), task, "val", metric)

        exhaustive = len(tasks) <= int(g["max_exhaustive"])
        if strategy == "hoa":
            P = _pair_matrix(tasks, val)
            idx_groups = ([tuple(tasks.index(x) for x in grp) for grp in all_groups(tasks)] if exhaustive else
                          candidate_groups(P, int(g["max_group_size"]), max(int(g["n_candidates"]), len(tasks))))
            if g["groups"]:
                idx_groups = sorted(set(idx_groups) | {tuple(sorted(tasks.index(x) for x in grp)) for grp in g["groups"]})
            table = hoa_table(tasks, np.diag(P), P, idx_groups)
            for name in table.networks:
                groups_of.setdefault(name, (tuple(tasks[i] for i in self._split(name, tasks)), False))
        else:
            if g["groups"]:
                groups = [order(x) for x in g["groups"]] + [(t,) for t in tasks]
            elif exhaustive:
                groups = all_groups(tasks)
            else:
                P = _pair_matrix(tasks, val)
                groups = [tuple(tasks[i] for i in c)
                          for c in candidate_groups(P, int(g["max_group_size"]), max(int(g["n_candidates"]), len(tasks)))]
            groups = list(dict.fromkeys(groups))
            rows = [[val(grp, t) if t in grp else np.nan for t in tasks] for grp in groups]
            table = ScoreTable([network_name(x) for x in groups], np.ones(len(groups)), tasks, np.array(rows))
        if halves:
            half_rows = np.full((len(tasks), len(tasks)), np.nan)
            for i, t in enumerate(tasks):
                half_rows[i, i] = val((t,), t, half=True)
            table = ScoreTable([network_name(h, True) for h in halves] + table.networks,
                               np.concatenate([np.full(len(tasks), 0.5), table.cost]), tasks,
                               np.vstack([half_rows, table.scores]))

        # selection per budget, realised test scores from fully trained networks
        need = min_cover_cost(table)
        per_budget = {}
        for b in g["budgets"]:
            if b + 1e-9 < need:
                per_budget[f"{b:g}"] = {"budget": b, "feasible": False,
                                        "note": f"below the cheapest cover ({need:g})"}
                continue
            sel = select(table, b, method=g["method"])
            realise = g["realise"] == "all" or (g["realise"] == "report" and b == g["report_budget"])
            if realise or b == g["report_budget"]:
                for name in sel.networks:
                    full_rec(*groups_of[name])
            entry = {"budget": b, "feasible": True, "networks": sel.networks, "assignment": sel.assignment,
                     "cost": sel.cost, "predicted_total": sel.total, "method": sel.method}
            if all(n in full for n in sel.networks):
                assign = self._reassign(sel, tasks, full, groups_of, metric)
                entry.update(selection_assignment=sel.assignment, assignment=assign,
                             realised_test_total=sum(score_of(full[n], t, "test", metric) for t, n in assign.items()))
            per_budget[f"{b:g}"] = entry
        report = per_budget.get(f"{g['report_budget']:g}")
        if not report or not report["feasible"]:
            raise GroupingError(f"grouping.report_budget {g['report_budget']:g} cannot cover every task "
                                f"(the cheapest cover costs {need:g}); raise it")
        return self._result(ctx, tasks, g, metric, table, per_budget, report, full, groups_of, pool, t_start)

    @staticmethod
    def _reassign(sel, tasks, full, groups_of, metric) -> Dict[str, str]:
        """Each task -> the chosen network with its best fully trained validation score
        (ties: the selection's order, cheaper networks first)."""
        out = {}
        for t in tasks:
            have = [n for n in sel.networks if t in groups_of[n][0]]
            out[t] = min(have, key=lambda n: (score_of(full[n], t, "val", metric), n != sel.assignment[t]))
        return out

    @staticmethod
    def _split(name: str, tasks: List[str]) -> List[int]:
        return [tasks.index(x) for x in name.split("+")]

    def _result(self, ctx, tasks, g, metric, table, per_budget, report, full, groups_of, pool, t_start):
        assign = report["assignment"]
        recs = {n: full[n] for n in report["networks"]}
        pick = lambda key, split: {t: recs[assign[t]][key][split][t] for t in tasks}  # noqa: E731
        fit = FitResult(history=[], selected_epoch=0, val=pick("metrics", "val"), val_losses=pick("losses", "val"),
                        test=pick("metrics", "test"), test_losses=pick("losses", "test"),
                        wall_time_s=pool.train_time_s)  # the search's training cost, cached candidates included
        params = {"total": int(sum(r["params"]["total"] for r in recs.values())),
                  "per_task": {t: int(recs[assign[t]]["params"]["per_task"][t]) for t in tasks}}
        flops = {"total": int(sum(r["flops"]["total"] for r in recs.values())),
                 "per_task": {t: int(recs[assign[t]]["flops"]["per_task"][t]) for t in tasks}}
        hib = {t.name: t.higher_is_better for t in ctx.data.tasks}
        stl = {t: full[network_name((t,))]["metrics"]["test"][t] for t in tasks}
        aio = full[network_name(tuple(tasks))]
        baselines = {
            "single_task": {"cost": float(len(tasks)), "networks": [network_name((t,)) for t in tasks],
                            "test_total": sum(score_of(full[network_name((t,))], t, "test", metric) for t in tasks)},
            "all_in_one": {"cost": 1.0, "networks": [network_name(tuple(tasks))],
                           "test_total": sum(score_of(aio, t, "test", metric) for t in tasks),
                           "delta_t_vs_single": delta_t(aio["metrics"]["test"], stl, hib)[0]}}
        candidates = {n: {"tasks": list(groups_of[n][0]), "half": groups_of[n][1], "run_id": r["run_id"],
                          "seed": r["seed"], "epochs": r["epochs"], "train_time_s": r.get("train_time_s")}
                      for n, r in sorted(full.items())}
        payload = {
            "strategy": g["strategy"], "tasks": tasks, "seed": ctx.seed,
            "score": {"metric": metric[0] if isinstance(metric[0], str) else metric[0], "direction": metric[1],
                      "convention": "lower is better (higher-is-better metrics negated)", "split": "val"},
            "budgets": per_budget, "report_budget": g["report_budget"],
            "delta_t_vs_single": delta_t(fit.test, stl, hib)[0], "baselines": baselines,
            "score_table": table.to_frame().replace({np.nan: None}).to_dict(orient="records"),
            "candidates_full": candidates, "trained": pool.trained, "reused": pool.reused,
            "half_networks": {t: info for t, (_, info) in pool.halves.items()},
            "candidate_train_time_s": pool.train_time_s, "wall_time_s": time.perf_counter() - t_start}
        if ctx.folder is not None:
            write_outputs(ctx.folder, payload)
        model = build_container(ctx, tasks, report["networks"], assign, groups_of, pool.arch,
                                {t: node for t, (node, _) in pool.halves.items()})
        info = {k: payload[k] for k in ("strategy", "report_budget", "delta_t_vs_single", "trained", "reused",
                                        "candidate_train_time_s")}
        info["selection"] = {k: report[k] for k in ("networks", "assignment", "cost", "predicted_total")}
        return ProcedureResult(fit=fit, model=model, info=info, params=params, flops=flops)
