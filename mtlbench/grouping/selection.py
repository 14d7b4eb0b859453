"""Task grouping under a compute budget (Standley et al., ICML 2020, "Which Tasks Should Be
Learned Together in Multi-task Learning?"; reference code tstandley/taskgrouping,
network_selection/).

Conventions
- A ``ScoreTable`` has one row per candidate network (``networks``, ``cost``) and one
  column per task; ``scores[k, t]`` is network k's score on task t, **lower is better**
  (callers negate higher-is-better metrics; ``from_csv(higher_is_better=True)`` does it),
  nan where network k does not have task t. Full-width networks cost 1, the paper's
  half-width single-task networks 0.5.
- Objective (the paper's): choose a set S of networks with sum of costs <= budget that
  covers every task, minimising sum_t min_{k in S} scores[k, t]; each task is served by
  its best network in S (the ``assignment``).
- ``select(table, budget, method)``: ``bnb`` (exact branch-and-bound, the default up to 64
  rows), ``dp`` (exact dynamic program over task subsets, the default beyond 64 rows for
  <= 12 tasks with costs on a grid), ``brute`` (enumeration, for checking), ``milp`` (exact
  integer program, scipy.optimize.milp / HiGHS, the default for everything else), ``greedy`` / ``beam`` (scalable
  heuristics; their result carries the LP-relaxation lower bound, so the gap is certified).
- ``hoa_table`` is the paper's higher-order approximation: a group's score on task i is
  the mean over j in the group, j != i, of pair[i, j] (the score of i in the network
  trained on {i, j}).
- ``candidate_groups`` generates groups from pairwise scores without enumerating subsets
  (the scalable path for tens to hundreds of tasks).

The search algorithms live in ``grouping_search.py`` and ``grouping_dp.py``, candidate
generation in ``grouping_candidates.py``, synthetic problems in ``grouping_synth.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd


class GroupingError(ValueError):
    """A grouping problem that cannot be solved as posed (one line, names the fix)."""


@dataclass
class ScoreTable:
    networks: List[str]
    cost: np.ndarray          # [N]
    tasks: List[str]
    scores: np.ndarray        # [N, T], lower is better, nan = network lacks the task

    def __post_init__(self):
        self.networks = [str(n) for n in self.networks]
        self.tasks = [str(t) for t in self.tasks]
        self.cost = np.asarray(self.cost, dtype=float).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=float)
        n, t = len(self.networks), len(self.tasks)
        if self.scores.shape != (n, t) or self.cost.shape != (n,):
            raise GroupingError(f"score table shapes disagree: {n} networks, {t} tasks, "
                                f"scores {self.scores.shape}, cost {self.cost.shape}")
        if len(set(self.networks)) != n:
            dup = sorted({x for x in self.networks if self.networks.count(x) > 1})[0]
            raise GroupingError(f"network '{dup}' appears twice in the score table; give each row a unique name")
        if len(set(self.tasks)) != t:
            raise GroupingError("task names in the score table must be unique")
        if not np.all(np.isfinite(self.cost)) or np.any(self.cost < 0):
            raise GroupingError("network costs must be finite and >= 0")
        if np.any(np.isinf(self.scores)):
            raise GroupingError("scores must be finite numbers (leave a cell empty where a network lacks the task)")

    @property
    def has(self) -> np.ndarray:
        """[N, T] bool: network k has task t."""
        return ~np.isnan(self.scores)

    def network_tasks(self, k: int) -> List[str]:
        return [t for t, h in zip(self.tasks, self.has[k]) if h]

    def subset(self, rows: Sequence[int]) -> "ScoreTable":
        rows = list(rows)
        return ScoreTable([self.networks[k] for k in rows], self.cost[rows], list(self.tasks), self.scores[rows])

    def total(self, networks: Sequence[str]) -> float:
        """Objective of a set of networks (inf when a task is left uncovered)."""
        idx = [self.networks.index(n) for n in networks]
        if not idx:
            return math.inf
        best = np.nanmin(np.where(self.has[idx], self.scores[idx], np.inf), axis=0)
        return float(best.sum())

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.scores, columns=self.tasks)
        df.insert(0, "cost", self.cost)
        df.insert(0, "network", self.networks)
        return df

    def to_csv(self, path) -> None:
        self.to_frame().to_csv(path, index=False)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, higher_is_better: bool = False, source: str = "table") -> "ScoreTable":
        missing = [c for c in ("network", "cost") if c not in df.columns]
        if missing:
            raise GroupingError(f"{source}: missing column(s) {', '.join(missing)}; a score table has columns "
                                f"network, cost, then one column per task")
        tasks = [c for c in df.columns if c not in ("network", "cost")]
        if not tasks:
            raise GroupingError(f"{source}: no task columns after network, cost")
        try:
            scores = df[tasks].apply(pd.to_numeric, errors="raise").to_numpy(dtype=float)
            cost = pd.to_numeric(df["cost"], errors="raise").to_numpy(dtype=float)
        except (ValueError, TypeError) as exc:
            raise GroupingError(f"{source}: non-numeric score or cost ({str(exc).splitlines()[0]})") from None
        if np.any(np.isnan(cost)):
            raise GroupingError(f"{source}: every row needs a cost")
        if higher_is_better:
            scores = -scores
        return cls(df["network"].astype(str).tolist(), cost, tasks, scores)

    @classmethod
    def from_csv(cls, path, higher_is_better: bool = False) -> "ScoreTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"score table not found: {path}")
        import csv

        try:
            with open(path, newline="") as f:
                header = [h.strip() for h in next(csv.reader(f), [])]
            # only an empty cell means "the network lacks the task"; a literal NaN is an error
            df = pd.read_csv(path, skipinitialspace=True, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise GroupingError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise GroupingError(f"{path}: column '{dup[0]}' appears twice in the header; give each task one column")
        for col in df.columns:
            text = df[col].astype(str).str.strip().str.lower()
            if col not in ("network",) and text.isin(("nan", "-nan", "+nan", "na", "n/a", "null", "none")).any():
                row = int(text.isin(("nan", "-nan", "+nan", "na", "n/a", "null", "none")).to_numpy().argmax())
                raise GroupingError(f"{path}: row {row + 2}, column '{col}' is {df[col].iloc[row]!r}, not a "
                                    f"score; leave the cell empty where a network lacks the task")
        return cls.from_frame(df, higher_is_better=higher_is_better, source=str(path))


@dataclass
class Selection:
    networks: List[str]
    assignment: Dict[str, str]     # task -> network serving it
    total: float                   # sum over tasks of the assigned network's score
    cost: float = 0.0              # total cost of the chosen networks
    method: str = ""
    lower_bound: Optional[float] = None   # certified lower bound on the optimum (exact: == total)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"networks": list(self.networks), "assignment": dict(self.assignment), "total": self.total,
               "cost": self.cost, "method": self.method}
        if self.lower_bound is not None:
            out["lower_bound"] = self.lower_bound
        return out


def selection_from_rows(table: ScoreTable, rows: Sequence[int], method: str, lower_bound=None,
                        info: Optional[dict] = None) -> Selection:
    """The Selection of a set of row indices: each task goes to its best chosen network
    (ties: the cheaper, then the earlier row)."""
    rows = sorted(set(int(r) for r in rows), key=lambda r: (table.cost[r], r))
    sub = np.where(table.has[rows], table.scores[rows], np.inf)
    pick = np.argmin(sub, axis=0)
    assignment = {t: table.networks[rows[pick[j]]] for j, t in enumerate(table.tasks)}
    used = sorted({rows[p] for p in pick})  # a chosen network that serves no task is dropped
    total = float(sub[pick, np.arange(len(table.tasks))].sum())
    return Selection(networks=[table.networks[r] for r in used], assignment=assignment, total=total,
                     cost=float(table.cost[used].sum()), method=method,
                     lower_bound=total if method in ("bnb", "brute", "milp", "dp") else lower_bound,
                     info=dict(info or {}))


METHODS = ("auto", "bnb", "dp", "milp", "brute", "greedy", "beam")
BNB_MAX_ROWS = 64   # auto: branch-and-bound up to this many rows, the integer program beyond


def select(table: ScoreTable, budget: float, method: str = "auto", **options) -> Selection:
    """Best set of networks within ``budget`` (see the module docstring). Raises GroupingError
    when the budget cannot cover every task. ``options`` go to the method (e.g. ``width`` for
    beam, ``time_limit`` for milp)."""
    from mtlbench.grouping import dp
    from mtlbench.grouping import search as gs

    if method not in METHODS:
        raise GroupingError(f"unknown selection method '{method}'; methods: {', '.join(METHODS)}")
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise GroupingError(f"budget must be a number (got {budget!r})") from None
    if not math.isfinite(budget) or budget < 0:
        raise GroupingError(f"budget must be a finite number >= 0 (got {budget})")
    uncovered = [t for t, h in zip(table.tasks, table.has.any(axis=0)) if not h]
    if uncovered:
        raise GroupingError(f"no network has task(s) {', '.join(uncovered)}; add a row with a score for them")
    if method == "auto":
        if len(table.networks) <= BNB_MAX_ROWS:
            method = "bnb"
        elif len(table.tasks) <= dp.DP_MAX_TASKS and dp.cost_unit(table.cost) is not None:
            method = "dp"
        else:
            method = "milp"
    fn = {"bnb": gs.branch_and_bound, "dp": dp.dp_select, "brute": gs.brute_force, "milp": gs.milp_select,
          "greedy": gs.greedy_select, "beam": gs.beam_select}[method]
    result = fn(table, budget, **options)
    if result is None:
        need = gs.min_cover_cost(table)
        raise GroupingError(f"budget {budget:g} cannot cover every task (the cheapest cover costs {need:g}); "
                            f"raise the budget to at least {need:g}")
    return result


def hoa_table(tasks: Sequence[str], single: np.ndarray, pair: np.ndarray, groups: Sequence[tuple],
              single_cost: float = 1.0, names: Optional[Sequence[str]] = None) -> ScoreTable:
    """Higher-order approximation (Standley et al. Sec. 3.3): a table with one row per group.
    A group of one task scores ``single[i]`` at cost ``single_cost``; a larger group scores
    task i as the mean over j in the group, j != i, of ``pair[i, j]`` (cost 1). Pairs thus get
    their measured scores. ``names`` defaults to the tasks joined by '+'."""
    tasks = list(tasks)
    single, pair = np.asarray(single, dtype=float), np.asarray(pair, dtype=float)
    n = len(tasks)
    if single.shape != (n,) or pair.shape != (n, n):
        raise GroupingError(f"hoa_table: single must be [{n}] and pair [{n}, {n}] "
                            f"(got {single.shape}, {pair.shape})")
    rows, cost, nets = [], [], []
    for k, g in enumerate(groups):
        g = tuple(int(i) for i in g)
        if not g or len(set(g)) != len(g) or min(g) < 0 or max(g) >= n:
            raise GroupingError(f"hoa_table: group {g} must hold distinct task indices in 0..{n - 1}")
        row = np.full(n, np.nan)
        if len(g) == 1:
            row[g[0]] = single[g[0]]
        else:
            for i in g:
                vals = [pair[i, j] for j in g if j != i]
                if any(np.isnan(vals)):
                    raise GroupingError(f"hoa_table: pair score of task {tasks[i]} missing for group {g}")
                row[i] = float(np.mean(vals))
        rows.append(row)
        cost.append(single_cost if len(g) == 1 else 1.0)
        nets.append(names[k] if names is not None else "+".join(tasks[i] for i in g))
    return ScoreTable(nets, np.array(cost), tasks, np.array(rows).reshape(len(rows), n))


def candidate_groups(pair: np.ndarray, max_size: int, n_candidates: int, seed: int = 0) -> List[tuple]:
    """Candidate task groups generated from pairwise scores (see grouping_candidates.py)."""
    from mtlbench.grouping.candidates import generate

    return generate(pair, max_size=max_size, n_candidates=n_candidates, seed=seed)


__all__ = ["GroupingError", "ScoreTable", "Selection", "select", "hoa_table", "candidate_groups",
           "selection_from_rows", "METHODS"]
