"""``python -m mtlbench group scores=FILE.csv budget=B|[list] [out=FILE.json] ...``: select task
groups from a score table a user already has (e.g. the per-task losses published with
Standley et al., ICML 2020). Config: ``mtlbench/conf/group.yaml``.

Prints, per budget, the chosen networks, the task -> network assignment and the total; with
``out=FILE.json`` writes ``{"networks", "assignment", "total", ...}`` for one budget, or one
such object per budget under the budget (formatted with ``%g``) as key for a list. With
``test_scores=FILE.csv`` each selection also gets ``test_total``: the sum over tasks of the
test score of the network serving the task, and ``test_assignment``: each task goes to the
chosen network with the best score in ``assign_scores=FILE.csv`` (default: the ``scores``
table itself). For Standley et al.'s early-stopping approximation select on the early-stopped
table and assign with the fully trained VALIDATION table: ``group scores=results_20.csv
assign_scores=results.csv test_scores=results_test.csv`` (leak-free). The paper's own code
(``network_selection/main.cpp``, ``translate_scores_to_test_set`` + ``score_solution``)
assigns by the TEST scores, i.e. ``assign_scores=`` the test table.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

from mtlbench.grouping.selection import GroupingError, ScoreTable, Selection, select
from mtlbench.results.files import WriteError, atomic_write_text


def assign_among(networks: List[str], table: ScoreTable, fallback: dict) -> dict:
    """Each task -> the network of ``networks`` with its best (lowest) score in ``table``;
    ties keep ``fallback``'s choice."""
    missing = [n for n in networks if n not in table.networks]
    if missing:
        raise GroupingError(f"assign_scores table has no row for chosen network '{missing[0]}'")
    out = {}
    for task in fallback:
        if task not in table.tasks:
            raise GroupingError(f"assign_scores table has no column for task '{task}'")
        j = table.tasks.index(task)
        vals = {n: table.scores[table.networks.index(n), j] for n in networks}
        vals = {n: v for n, v in vals.items() if not math.isnan(v)}
        if not vals:
            raise GroupingError(f"assign_scores table scores none of the chosen networks on task '{task}'")
        out[task] = min(vals, key=lambda n: (vals[n], n != fallback[task]))
    return out


def realised_total(sel: Selection, test: ScoreTable, higher_is_better: bool = False,
                   assignment: Optional[dict] = None) -> float:
    """Sum over tasks of the serving network's score in ``test`` (in the table's own sign);
    ``assignment`` defaults to the selection's."""
    total = 0.0
    for task, net in (assignment or sel.assignment).items():
        if net not in test.networks or task not in test.tasks:
            raise GroupingError(f"test table has no score of network '{net}' on task '{task}'")
        v = test.scores[test.networks.index(net), test.tasks.index(task)]
        if math.isnan(v):
            raise GroupingError(f"test table has no score of network '{net}' on task '{task}'")
        total += v
    return -total if higher_is_better else total


def budgets_of(value) -> List[float]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in vals:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise GroupingError(f"budget must be a number or a list of numbers (got {v!r}); "
                                f"e.g. budget=2 or budget=[1,1.5,2]") from None
    if not out:
        raise GroupingError("budget list is empty; e.g. budget=[1,1.5,2]")
    return out


def _fail(msg: str) -> int:
    from mtlbench.cli.commands import fail

    return fail(msg)


def main(args: List[str]) -> int:
    from mtlbench.cli.commands import command_config

    c, msg = command_config("group", args, "python -m mtlbench group scores=scores.csv budget=2",
                            missing="group needs scores=FILE.csv and budget=B (a number or a list), "
                                    "e.g. python -m mtlbench group scores=scores.csv budget=[1,2]")
    if msg:
        return _fail(msg)
    try:
        for key in ("scores", "test_scores", "out"):
            if (c[key] is not None or key == "scores") and (not isinstance(c[key], str) or not c[key].strip()):
                raise GroupingError(f"{key} must name a file (got {c[key]!r}), e.g. {key}=scores.csv"
                                    + (" (or leave it out)" if key != "scores" else ""))
        if c["assign_scores"] and not c["test_scores"]:
            raise GroupingError("assign_scores assigns tasks for test_total: give test_scores=FILE.csv too")
        hib = c["higher_is_better"]
        if not isinstance(hib, bool):
            raise GroupingError(f"higher_is_better must be true or false (got {hib!r})")
        table = ScoreTable.from_csv(Path(c["scores"]), higher_is_better=hib)
        test = ScoreTable.from_csv(Path(c["test_scores"]), higher_is_better=hib) if c["test_scores"] else None
        assign = ScoreTable.from_csv(Path(c["assign_scores"]), higher_is_better=hib) \
            if c["assign_scores"] else table
        budgets = budgets_of(c["budget"])
        results = {}
        for b in budgets:
            sel = select(table, b, method=str(c["method"]))
            obj = sel.to_dict()
            if hib:  # report in the table's own sign
                obj["total"] = -sel.total
                if "lower_bound" in obj:
                    obj["upper_bound"] = -obj.pop("lower_bound")  # of the higher-is-better total
            if test is not None:
                obj["test_assignment"] = assign_among(sel.networks, assign, sel.assignment)
                obj["test_total"] = realised_total(sel, test, hib, obj["test_assignment"])
            results[f"{b:g}"] = obj
    except (GroupingError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    for key, obj in results.items():
        extra = f", test total {obj['test_total']:.6g}" if "test_total" in obj else ""
        print(f"budget {key}: networks {', '.join(obj['networks'])} (cost {obj['cost']:g}); "
              f"total {obj['total']:.6g}{extra} [{obj['method']}]")
        print("  assignment: " + ", ".join(f"{t} -> {n}" for t, n in obj["assignment"].items()))
    if c["out"]:
        out = Path(c["out"])
        payload = next(iter(results.values())) if not isinstance(c["budget"], (list, tuple)) else results
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, json.dumps(payload, indent=2) + "\n")  # never a 0-byte file on a full disk
        except OSError as exc:
            return _fail(str(exc) if isinstance(exc, WriteError) else
                         f"cannot write {out}: {exc.strerror or exc} ({exc.filename}); choose another out=")
        print(f"[mtlbench] selection written to {out}")
    return 0
