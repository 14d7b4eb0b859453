"""The ``gate_weights`` report plot: mixture-of-experts gate statistics over training.

Architectures with gates (MMoE, CGC, PLE, DSelect-k) log once per epoch, through
``MTLModel.epoch_stats``, ``arch.gates = {gate: {expert: mean weight}}`` in metrics.jsonl (a
gate per task; PLE also per layer and its shared gates). One panel per (method, gate): each
expert's mean weight per epoch, the line the mean over seeds, the band min..max over seeds.
Nothing is written when no run logged gates.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

MAX_GATES = 6  # panels per method (PLE with many tasks: the first ones, in logged order)


def _gate_rows(path: Path) -> List[dict]:
    f = Path(path) / "metrics.jsonl"
    if not f.is_file():
        return []
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [r["arch"]["gates"] for r in rows if isinstance(r.get("arch"), dict) and isinstance(r["arch"].get("gates"), dict)]


def collect(runs) -> Dict[str, Dict[str, Dict[str, List[np.ndarray]]]]:
    """{method: {gate: {expert: [per-run series over epochs]}}} from the runs' metrics.jsonl."""
    out: Dict[str, Dict[str, Dict[str, List[np.ndarray]]]] = {}
    for r in runs.itertuples():
        rows = _gate_rows(r.path)
        if not rows:
            continue
        for gate, experts in rows[0].items():
            for e in experts:
                series = np.array([float(row.get(gate, {}).get(e, np.nan)) for row in rows])
                out.setdefault(r.method, {}).setdefault(gate, {}).setdefault(e, []).append(series)
    return out


def gate_weights(a, out: Path) -> List[Path]:
    from mtlbench.results.plots import _save, plt

    data = collect(a.runset.runs)
    if not data:
        return []
    methods = sorted(data)
    cols = min(MAX_GATES, max(len(g) for g in data.values()))
    fig, axes = plt.subplots(len(methods), cols, figsize=(3.3 * cols, 2.7 * len(methods)), squeeze=False,
                             sharey=True)
    for i, m in enumerate(methods):
        gates = list(data[m].items())[:cols]
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(gates):
                ax.axis("off")
                continue
            gate, experts = gates[j]
            for e, runs in experts.items():
                n = min(len(x) for x in runs)
                arr = np.vstack([x[:n] for x in runs])
                ep = np.arange(1, n + 1)
                line, = ax.plot(ep, np.nanmean(arr, 0), label=e)
                if len(arr) > 1:
                    ax.fill_between(ep, np.nanmin(arr, 0), np.nanmax(arr, 0), color=line.get_color(), alpha=0.15)
            n_seeds = len(next(iter(experts.values())))
            ax.set_title(f"{m}: gate {gate} ({n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
        axes[i][0].set_ylabel("mean gate weight", fontsize=8)
    fig.suptitle(f"{a.runset.dataset}: mean gate weight per expert over training (band: min..max over seeds)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, out, "gate_weights")
