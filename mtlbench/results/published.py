"""Published results beside measured ones: ``python -m mtlbench report dataset=<d> published=<key>``.

A small, cited store: one YAML file per paper table in ``mtlbench/results/published/``
(``<key>.yaml``), transcribed unchanged from the paper or the authors' repository, each with
``source`` (paper, repository file or document, table, page), ``protocol`` (a summary of how
the numbers were obtained), ``delta`` (the Δ the table states, or null), ``columns`` (each
printed column: its mtlbench ``task/metric`` and the ``factor`` from the printed unit to
mtlbench's, e.g. 0.01 for a mIoU printed in %), ``rows`` (``label`` as printed, ``methods``:
the mtlbench method names the row stands for, ``values`` in column order, optional
``delta``: the Δ the table states for that row) and ``notes`` (what was left out and why).

``extend(table, analysis, published)`` adds to a report table (``results.tables.Table``):

* one row per published row, labelled ``<label> (published)``: its values in mtlbench's
  units, no std, not tested, not ranked (never bold / underlined), ``n`` = "pub"; its Δ is the
  Δ the source states, else the Δ computed from its values against the published row of the
  report's baseline (e.g. STL), else "–";
* a "measured vs published" column pair, filled on the measured rows of methods present in
  both: ``Δ paper`` (that published Δ, beside the table's measured Δ) and ``gap (%)`` = mean
  over the metrics both have of s·(measured − published)/published·100 (s = +1 when higher is
  better: positive = the measured run does better than the published number);
* footnotes: the source, the published protocol next to the measured one (their
  differences), and the table's own notes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

STORE = Path(__file__).with_name("published")
Key = Tuple[str, str]


@dataclass
class PublishedRow:
    label: str
    methods: List[str]
    raw: List[float]                     # as printed, in column order
    values: Dict[Key, float]             # (task, metric) -> value in mtlbench's units
    delta: Optional[float] = None        # the Δ the source states for this row


@dataclass
class PublishedTable:
    key: str
    dataset: str
    title: str
    source: str
    protocol: str
    delta_kind: Optional[str]
    columns: List[Tuple[str, Key, float]]
    rows: List[PublishedRow]
    notes: List[str] = field(default_factory=list)

    def row_for(self, method: str) -> Optional[PublishedRow]:
        """The first row standing for mtlbench method ``method`` (None when there is none)."""
        return next((r for r in self.rows if method in r.methods), None)


def available() -> List[str]:
    return sorted(p.stem for p in STORE.glob("*.yaml"))


def load(key: str) -> PublishedTable:
    """The published table ``key``; a one-line ValueError naming the known keys otherwise."""
    path = STORE / f"{key}.yaml"
    if not key or "/" in key or not path.is_file():
        raise ValueError(f"unknown published table '{key}'; known: {', '.join(available())} "
                         f"(files in {STORE})")
    d = yaml.safe_load(path.read_text())
    columns = []
    for c in d["columns"]:
        task, metric = c["metric"].split("/", 1)
        columns.append((str(c["label"]), (task, metric), float(c.get("factor", 1.0))))
    rows = []
    for r in d["rows"]:
        raw = [float(v) for v in r["values"]]
        if len(raw) != len(columns):
            raise ValueError(f"published table {key}: row '{r['label']}' has {len(raw)} values for "
                             f"{len(columns)} columns ({path})")
        vals = {k: v * f for (_, k, f), v in zip(columns, raw)}
        rows.append(PublishedRow(str(r["label"]), list(r.get("methods") or []), raw, vals, r.get("delta")))
    delta = (d.get("delta") or {}).get("kind")
    return PublishedTable(d["key"], d["dataset"], d["title"], " ".join(d["source"].split()),
                          " ".join(d["protocol"].split()), delta, columns, rows,
                          [" ".join(str(n).split()) for n in d.get("notes") or []])


def _published_delta(pub: PublishedTable, row: PublishedRow, baseline: str, kind: str,
                     hib: Dict[str, Dict[str, bool]]) -> Tuple[float, str]:
    """(Δ of a published row in the report's convention, how it was obtained)."""
    from mtlbench.results.stats import delta_spec

    if row.delta is not None and pub.delta_kind == kind:
        return float(row.delta), "stated"
    base = pub.row_for(baseline)
    if base is None:
        return math.nan, "none"
    nest = lambda vals: {t: {m: v for (tt, m), v in vals.items() if tt == t} for t, _ in vals}  # noqa: E731
    spec = delta_spec(nest(row.values), nest(base.values), hib)
    if not spec.columns:
        return math.nan, "none"
    x = np.array([row.values[c] for c in spec.columns])
    b = np.array([base.values[c] for c in spec.columns])
    return float(spec.delta(x, b, kind)), "computed"


def gap(measured: Dict[Key, float], row: PublishedRow, hib: Dict[str, Dict[str, bool]]) -> float:
    """Mean over the shared metrics of s·(measured − published)/published·100 (positive =
    the measured value is better)."""
    parts = []
    for (t, m), p in row.values.items():
        x, d = measured.get((t, m)), hib.get(t, {}).get(m)
        if x is not None and np.isfinite(x) and d is not None and p != 0:
            parts.append((1.0 if d else -1.0) * (x - p) / abs(p) * 100.0)
    return float(np.mean(parts)) if parts else math.nan


def extend(table, a, pub: PublishedTable):
    """``table`` (the report table of analysis ``a``) with the published rows, the
    measured-vs-published column pair and the footnotes (see the module docstring)."""
    from mtlbench.results.protocol import protocol_label
    from mtlbench.results.stats import delta_info
    from mtlbench.results.tables import Cell, Column, _num

    o, rs = a.opts, a.runset
    if pub.dataset != rs.dataset:
        raise ValueError(f"published table '{pub.key}' is for dataset {pub.dataset}, not {rs.dataset}: pick one of "
                         f"{', '.join(k for k in available() if load(k).dataset == rs.dataset) or '(none yet)'}")
    symbol, _, _ = delta_info(o.delta)
    hib = rs.higher_is_better
    idx = {(c.group, c.label): j for j, c in enumerate(table.columns)}
    delta_col = next(j for j, c in enumerate(table.columns) if c.label.startswith(symbol))
    deltas = {id(r): _published_delta(pub, r, o.baseline, o.delta, hib) for r in pub.rows}
    for r in pub.rows:
        cells = [Cell() for _ in table.columns]
        cells[0] = Cell(text="pub")
        for k, v in r.values.items():
            if k in idx:
                cells[idx[k]] = Cell(text=_num(v))
        d, _ = deltas[id(r)]
        if np.isfinite(d):
            cells[delta_col] = Cell(text=f"{d + 0.0:+.2f}")  # + 0.0: no "-0.00"
        table.rows.append(f"{r.label} (published)")
        if table.row_names:
            table.row_names.append(f"{r.label} (published)")
        table.cells.append(cells + [Cell(), Cell()])
    table.columns += [Column("vs published", label, group_name="vs published", label_name=label, key="published")
                      for label in (f"{symbol} paper (%)", "gap (%)")]
    for i, m in enumerate(table.rows[:len(a.methods)]):
        r = pub.row_for(m)
        pair = [Cell(), Cell()]
        if r is not None:
            d, _ = deltas[id(r)]
            g = gap({k: float(a.means.loc[m, k]) for k in a.means.columns}, r, hib)
            pair = [Cell(text=f"{d + 0.0:+.2f}" if np.isfinite(d) else "–"),
                    Cell(text=f"{g + 0.0:+.2f}" if np.isfinite(g) else "–")]
        table.cells[i] += pair
    table.notes += footnotes(pub, a, deltas, symbol, protocol_label(rs.protocol))
    return table


def footnotes(pub: PublishedTable, a, deltas, symbol: str, measured_protocol: str) -> List[str]:
    scaled = [f"{label} ×{f:g}" for label, _, f in pub.columns if f != 1.0]
    how = sorted({h for _, h in deltas.values()})
    words = {"stated": "as the source states it", "computed": f"computed from the published values against "
             f"its '{a.opts.baseline}' row", "none": f"not available (no published '{a.opts.baseline}' row)"}
    matched = [m for m in a.methods if pub.row_for(m) is not None]
    out = [f"Rows '(published)': {pub.title}. Source: {pub.source} Values as printed there"
           + (f" (converted to mtlbench's units: {', '.join(scaled)})" if scaled else "")
           + "; one number per cell: no std, not tested, not ranked.",
           f"{symbol} of a published row: " + "; ".join(words[h] for h in how) + ". 'vs published' "
           f"(methods in both: {', '.join(matched) or 'none'}): {symbol} paper = that published {symbol}; gap = "
           f"mean over shared metrics of s·(measured − published)/published·100, positive = measured better.",
           f"Protocol differences. Published: {pub.protocol} Measured: {measured_protocol}."]
    return out + [f"Published table note: {n}" for n in pub.notes]
