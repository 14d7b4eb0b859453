"""Outputs of the ``standley`` procedure: ``grouping.json`` (everything), ``grouping.csv`` /
``grouping.md`` (one row per budget) and ``grouping.png`` (score vs budget, with the
single-task and all-in-one baselines), plus the container model the run reports.

Scores follow the selection's convention: lower is better (losses; higher-is-better
metrics negated). "predicted" = the selection's objective on the validation scores (for
HOA: the estimate); "realised" = the chosen networks' test scores, each task taken from its
assigned, fully trained network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pandas as pd
from mtlbench.grouping.networks import GroupedNetworks
from mtlbench.results.store import atomic_write_json, atomic_write_text


def build_container(ctx, tasks: List[str], networks: List[str], assignment: Dict[str, str],
                    groups_of: dict, anode: dict, half_nodes: Dict[str, dict]) -> GroupedNetworks:
    """The deployed solution's structure, built untrained (its networks were trained as their
    own candidate runs; params / flops in run.json come from those runs). ``half_nodes``:
    task -> the backbone node of its half-size network."""
    by_name = {t.name: t for t in ctx.data.tasks}
    nets = {}
    for name in networks:
        grp, half = groups_of[name]
        bnode = dict(half_nodes[grp[0]]) if half else dict(ctx.cfg["backbone"])
        nets[name] = ctx.build_model([by_name[t] for t in grp], arch=anode, backbone=bnode)
    return GroupedNetworks([by_name[t] for t in tasks], nets, assignment)


def budget_frame(payload: dict) -> pd.DataFrame:
    rows = []
    for key, e in payload["budgets"].items():
        rows.append({"budget": e["budget"], "feasible": e["feasible"],
                     "networks": " ; ".join(e.get("networks", [])), "cost": e.get("cost"),
                     "predicted_total": e.get("predicted_total"), "realised_test_total": e.get("realised_test_total")})
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame, payload: dict) -> str:
    fmt = lambda v: "" if v is None or (isinstance(v, float) and v != v) else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"# Task grouping ({payload['strategy'].upper()}), tasks {', '.join(payload['tasks'])}", "",
             f"Scores: {payload['score']['metric']} ({payload['score']['convention']}); predicted = selection objective "
             f"on validation scores, realised = test scores of the chosen, fully trained networks.", "",
             "| budget | networks | cost | predicted | realised test |", "|---:|---|---:|---:|---:|"]
    for _, r in df.iterrows():
        nets = r["networks"] if r["feasible"] else "(infeasible)"
        lines.append(f"| {r['budget']:g} | {nets} | {fmt(r['cost'])} | {fmt(r['predicted_total'])} | "
                     f"{fmt(r['realised_test_total'])} |")
    b = payload["baselines"]
    lines += ["", f"Single-task networks (cost {b['single_task']['cost']:g}): realised test "
              f"{b['single_task']['test_total']:.4f}",
              f"All-in-one network (cost 1): realised test {b['all_in_one']['test_total']:.4f} "
              f"(Δ_T vs single-task {b['all_in_one']['delta_t_vs_single']:+.2f}%)",
              f"Grouped solution at budget {payload['report_budget']:g}: Δ_T vs single-task "
              f"{payload['delta_t_vs_single']:+.2f}% (test metrics; + = better)", ""]
    return "\n".join(lines)


def _plot(df: pd.DataFrame, payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["feasible"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ok["budget"], ok["predicted_total"], "o--", label="predicted (val)")
    real = ok.dropna(subset=["realised_test_total"])
    if len(real):
        ax.plot(real["budget"], real["realised_test_total"], "s-", label="realised (test)")
    b = payload["baselines"]
    ax.axhline(b["single_task"]["test_total"], color="gray", ls=":", label=f"single-task (cost {b['single_task']['cost']:g})")
    ax.axhline(b["all_in_one"]["test_total"], color="black", ls="-.", label="all-in-one (cost 1)")
    ax.set_xlabel("budget (inference cost, full network = 1)")
    ax.set_ylabel(f"sum over tasks of {payload['score']['metric']} (lower is better)")
    ax.set_title(f"Task grouping ({payload['strategy']}): {', '.join(payload['tasks'])}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(folder: Path, payload: dict) -> None:
    folder = Path(folder)
    atomic_write_json(folder / "grouping.json", payload)
    df = budget_frame(payload)
    atomic_write_text(folder / "grouping.csv", df.to_csv(index=False))
    atomic_write_text(folder / "grouping.md", _markdown(df, payload))
    _plot(df, payload, folder / "grouping.png")
