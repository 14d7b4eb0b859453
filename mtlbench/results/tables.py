"""The paper table of one dataset, rendered as Markdown, LaTeX (booktabs), CSV and HTML.

One row per method (baseline first). Columns: n (seeds); per task metric the mean ± std
(ddof=1) over seeds with † / ‡ when significantly better / worse than the baseline
(``significance.py``: the chosen test, Holm over all cells); #params (absolute and
relative to the baseline, i.e. STL by default); FLOPs per forward (one sample, all
tasks); training wall time; Δ (Δ_T or Δ_m, see ``stats.py``) in % with its bootstrap CI;
mean rank over the metric columns. In every metric, Δ and rank column the best value is
bold and the second best marked (by that column's direction: ↑ higher / ↓ lower is
better; ties share the mark; no second mark with fewer than 3 rows): underlined in LaTeX
and HTML, in italics in Markdown (GitHub drops ``<u>``; ``second_mark=ins`` writes
``<ins>``). The baseline's own Δ (0 by definition) is never marked.

Publication style (report keys): display names for methods, tasks and metrics (``NAMES``
below, ``names={...}`` adds or replaces entries, ``names=false`` shows identifiers; the CSV
table always keeps identifiers), ``precision`` (digits after the point of metric values),
``percent`` (fractions such as accuracy and mIoU ×100, the header says %), ``resizebox``
(LaTeX scaled to ``\\linewidth``; off by default: normal font size), ``footnote`` (``short``:
n, the test, Δ; ``long``: also the training protocol and every note on what was left out
and why; ``summary.md`` always has the long one).

LaTeX goes through ``pandas.io.formats.style.Styler.to_latex`` (``hrules=True``: booktabs
``\\toprule`` / ``\\midrule`` / ``\\bottomrule``); the output is ASCII only (needs
``booktabs``, and ``graphicx`` with ``resizebox``).
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from mtlbench.results.protocol import protocol_label
from mtlbench.results.significance import BETTER, TESTS, WORSE
from mtlbench.results.stats import delta_info

MARKS = {BETTER: "†", WORSE: "‡"}

# display names (names={...} in the report config adds or replaces entries)
NAMES = {
    "stl": "STL", "independent": "Independent", "hard_sharing": "Hard sharing", "cross_stitch": "Cross-stitch",
    "mtan": "MTAN", "dwa": "DWA", "uw": "UW", "uncertainty": "Uncertainty (UW)", "mgda": "MGDA-UB",
    "equal": "Equal", "static": "Static", "adashare": "AdaShare", "standley": "Standley et al.",
    "tag_grouping": "TAG", "seg": "Segmentation", "depth": "Depth", "normal": "Normal", "keypoint": "Keypoint",
    "gls": "GLS", "rlw": "RLW", "db_mtl": "DB-MTL", "famo": "FAMO", "stch": "STCH", "gradnorm": "GradNorm",
    "pcgrad": "PCGrad", "gradvac": "GradVac", "graddrop": "GradDrop", "cagrad": "CAGrad", "imtl": "IMTL",
    "nash_mtl": "Nash-MTL", "aligned_mtl": "Aligned-MTL", "moco": "MoCo", "sdmgrad": "SDMGrad", "modo": "MoDo",
    "fairgrad": "FairGrad", "excess_mtl": "ExcessMTL", "upgrad": "UPGrad", "mmoe": "MMoE", "cgc": "CGC",
    "ple": "PLE", "dselect_k": "DSelect-k", "ltb": "LTB",
    "edge": "Edge", "left": "Left", "right": "Right", "income": "Income", "never_married": "Never married",
    "miou": "mIoU", "pixel_acc": "Pix. Acc.", "abs_err": "Abs. Err.", "rel_err": "Rel. Err.",
    "mean_angle": "Mean", "median_angle": "Median", "within_11.25": "11.25°", "within_22.5": "22.5°",
    "within_30": "30°", "accuracy": "Acc.", "auc": "AUC", "rmse": "RMSE", "mae": "MAE",
    "explained_variance": "Expl. var.", "l1": "L1", "delta1": "δ1", "delta2": "δ2", "delta3": "δ3",
}
# metrics reported as fractions in [0, 1] (percent=true shows them ×100)
FRACTIONS = {"accuracy", "miou", "pixel_acc", "auc", "explained_variance"}
# the columns besides the metrics (columns=[...] picks; "ci": the CI of Δ)
COLUMNS = ("n", "params", "params_rel", "flops", "time", "delta", "ci", "rank")


@dataclass
class Style:
    names: dict = field(default_factory=dict)   # display names (merged over NAMES); None: identifiers
    precision: Optional[int] = None
    percent: bool = False
    resizebox: bool = False
    footnote: str = "short"                     # short | long
    second_mark: str = "italic"                 # markdown: italic | ins | u
    columns: tuple = COLUMNS                    # which columns besides the metrics

    def name(self, key: str) -> str:
        if self.names is None:
            return key
        if key in self.names:
            return str(self.names[key])
        if "+" in key:  # arch+balancer(+procedure) run names
            return " + ".join(self.name(k) for k in key.split("+"))
        return NAMES.get(key, key)


@dataclass
class Cell:
    value: float = math.nan                   # what ranks the cell (NaN: not ranked)
    text: str = "–"                           # the main number, formatted
    pm: Optional[str] = None                  # the std after ±
    ci: Optional[Tuple[str, str]] = None      # CI bounds
    mark: str = ""                            # better / worse
    emph: str = ""                            # best / second


@dataclass
class Column:
    group: str                                # task name, "" for the others
    label: str                                # metric name or column name
    arrow: str = ""                           # ↑ / ↓ / ""
    group_name: str = ""                      # display names (md, tex, html)
    label_name: str = ""
    key: str = ""                             # metric | one of COLUMNS


@dataclass
class Table:
    title: str
    rows: List[str]
    columns: List[Column]
    cells: List[List[Cell]]
    notes: List[str] = field(default_factory=list)
    row_names: List[str] = field(default_factory=list)   # display names of ``rows``
    style: Style = field(default_factory=Style)
    long_notes: List[str] = field(default_factory=list)  # the long footnote (summary.md)


def _num(x: float, ref: Optional[float] = None, precision: Optional[int] = None) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    if precision is not None:
        return f"{x:.{int(precision)}f}"
    r = abs(ref if ref is not None and np.isfinite(ref) else x)
    return f"{x:.{2 if r >= 10 else 3 if r >= 1 else 4}f}"


def _si(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suf}"
    return f"{x:.0f}"


def _emphasize(col: List[Cell], higher_is_better: bool) -> None:
    vals = pd.Series([c.value for c in col], dtype=float)
    if vals.notna().sum() < 2:
        return
    rank = vals.rank(ascending=not higher_is_better, method="min")
    for c, r in zip(col, rank):
        if r == 1:
            c.emph = "best"
        elif r == 2 and len(col) >= 3:
            c.emph = "second"


def build(a, style: Optional[Style] = None) -> Table:
    """The table of an ``report.Analysis``."""
    o, rs = a.opts, a.runset
    style = style or Style()
    symbol, definition, d_hib = delta_info(o.delta)
    cols = [Column("", "n", key="n")]
    grid = [[Cell(text=str(int(a.n[m]))) for m in a.methods]]
    marks = {(r.method, r.task, r.metric): r.mark for r in a.sig.itertuples()}
    for task, metric in a.means.columns:
        hib = rs.higher_is_better.get(task, {}).get(metric)
        pct = style.percent and metric in FRACTIONS
        k, prec = (100.0, 2 if style.precision is None else style.precision) if pct else (1.0, style.precision)
        cols.append(Column(task, metric + (" (%)" if pct else ""), "" if hib is None else ("↑" if hib else "↓"),
                           style.name(task), style.name(metric) + (" (%)" if pct else ""), key="metric"))
        col = []
        for m in a.methods:
            mu, sd = a.means.loc[m, (task, metric)] * k, a.stds.loc[m, (task, metric)] * k
            col.append(Cell(mu, _num(mu, precision=prec), _num(sd, mu, prec) if np.isfinite(sd) else None,
                            mark=marks.get((m, task, metric), "")))
        if hib is not None:
            _emphasize(col, hib)
        grid.append(col)
    base = o.baseline if a.has_baseline else None
    cols += [Column("", "#params", key="params"),
             Column("", f"×{base}" if base else "×base", label_name=f"×{style.name(base)}" if base else "", key="params_rel"),
             Column("", "FLOPs", key="flops"), Column("", "time (s)", key="time")]
    grid.append([Cell(text=_si(a.cost.loc[m, "params"])) for m in a.methods])
    grid.append([Cell(text=f"{a.cost.loc[m, 'params_rel']:.2f}×" if np.isfinite(a.cost.loc[m, "params_rel"])
                      else "–") for m in a.methods])
    grid.append([Cell(text=_si(a.cost.loc[m, "flops"])) for m in a.methods])
    grid.append([Cell(text=f"{a.cost.loc[m, 'wall_time_s']:.0f}" if np.isfinite(a.cost.loc[m, "wall_time_s"])
                      else "–") for m in a.methods])
    cols.append(Column("", f"{symbol} (%)", "↑" if d_hib else "↓", key="delta"))
    col = []
    for m in a.methods:
        d = a.deltas[o.delta].get(m)
        if d is None or not np.isfinite(d.delta):
            col.append(Cell())
            continue
        ci = (f"{d.low:+.2f}", f"{d.high:+.2f}") if np.isfinite(d.low) and "ci" in style.columns else None
        # the baseline's own Δ is 0 by definition: shown, never ranked or marked
        col.append(Cell(math.nan if m == base else d.delta, f"{d.delta:+.2f}", ci=ci))
    _emphasize(col, d_hib)
    grid.append(col)
    cols.append(Column("", "mean rank", "↓", key="rank"))
    col = [Cell(a.mean_rank[m], f"{a.mean_rank[m]:.2f}") if np.isfinite(a.mean_rank[m]) else Cell()
           for m in a.methods]
    _emphasize(col, False)
    grid.append(col)
    for c in cols:
        c.group_name = c.group_name or (style.name(c.group) if c.group else "")
        c.label_name = c.label_name or c.label
    keep = [j for j, c in enumerate(cols) if c.key == "metric" or c.key in style.columns]
    cols, grid = [cols[j] for j in keep], [grid[j] for j in keep]
    cells = [[grid[j][i] for j in range(len(cols))] for i in range(len(a.methods))]
    if o.baseline != "stl":  # the definition names the reference the numbers use
        definition = (definition.replace("M_stl", f"M_{o.baseline}")
                      .replace("single-task learning", o.baseline))
    long = footnotes(a, symbol, definition)
    short = short_footnotes(a, symbol, style) if style.footnote == "short" else long
    return Table(f"{rs.dataset}: {o.split} metrics, mean ± std over seeds", list(a.methods), cols, cells,
                 short, [style.name(m) for m in a.methods], style, long)


def short_footnotes(a, symbol: str, style: Style) -> List[str]:
    """n, the test and Δ in two sentences (``footnote=long``: the protocol and every note)."""
    o = a.opts
    ns = ", ".join(str(n) for n in sorted({int(x) for x in a.n}))
    out = [f"Mean ± std over n = {ns} seeds ({o.split} split); ↑/↓: higher/lower is better; bold: best, "
           f"underlined (Markdown: italics): second best."]
    if a.has_baseline:
        name = style.name(a.opts.baseline)
        out.append(f"†/‡: significantly better/worse than {name} ({TESTS[o.test]}, Holm, α = {o.alpha:g}). "
                   f"{symbol} (%): relative change vs {name}, {'positive = better' if o.delta == 'delta_t' else 'positive = worse'}"
                   + (f", [{o.confidence:.0%} bootstrap CI]." if "ci" in style.columns else "."))
    return out


def footnotes(a, symbol: str, definition: str) -> List[str]:
    o = a.opts
    ns = sorted({int(x) for x in a.n})
    out = [f"Mean ± std (ddof=1) over n seeds per method (n = {', '.join(map(str, ns))}; column n); "
           f"{o.split} split; ↑ higher / ↓ lower is better. Bold: best, underlined (Markdown: italics): second "
           f"best per column."]
    if a.has_baseline:
        n_cells = int(a.sig["p"].notna().sum())
        out.append(f"†/‡: significantly better/worse than {o.baseline} ({TESTS[o.test]}; Holm correction over "
                   f"the {n_cells} tested (method, metric) cells; α = {o.alpha:g}).")
        out.append(f"{definition}. Printed: {symbol}, {'positive = better' if o.delta == 'delta_t' else 'positive = WORSE (Nash-MTL sign)'}; "
                   f"[low, high]: {o.confidence:.0%} percentile bootstrap CI ({o.n_resamples} resamples; the "
                   f"method's and the baseline's seeds resampled independently).")
        out.append(f"#params: parameters a deployment of all tasks needs (STL: sum of the per-task networks), "
                   f"×{o.baseline}: relative to {o.baseline}. FLOPs: one forward pass of one sample, all tasks. "
                   f"Time: training wall time per run. Mean rank: over the metric columns (1 = best).")
    out.append(f"Protocol (every row): {protocol_label(a.runset.protocol)}.")
    out += [f"Warning: {w}" for w in a.warnings]
    out += [f"Note: {n}" for n in a.notes]
    return out


def _plain(c: Cell) -> str:
    s = c.text + (f" ± {c.pm}" if c.pm else "") + MARKS.get(c.mark, "")
    return s + (f" [{c.ci[0]}, {c.ci[1]}]" if c.ci else "")


def _header(c: Column, display: bool = False) -> str:
    group, label = (c.group_name, c.label_name) if display else (c.group, c.label)
    name = f"{group}/{label}" if group else label
    return f"{name} {c.arrow}".strip()


SECOND_MD = {"italic": ("*", "*"), "ins": ("<ins>", "</ins>"), "u": ("<u>", "</u>")}


def to_markdown(t: Table, long: bool = False) -> str:
    """The Markdown table (bold best, italics second: what GitHub renders); ``long``: with the
    long footnote whatever ``footnote`` says (summary.md)."""
    left, right = SECOND_MD.get(t.style.second_mark, SECOND_MD["italic"])
    lines = [f"# {t.title}", "", "| method | " + " | ".join(_header(c, True) for c in t.columns) + " |",
             "|---|" + "---|" * len(t.columns)]
    for name, row in zip(t.row_names or t.rows, t.cells):
        cells = []
        for c in row:
            s = _plain(c)
            cells.append(f"**{s}**" if c.emph == "best" else f"{left}{s}{right}" if c.emph == "second" else s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = t.long_notes if long and t.long_notes else t.notes
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def to_csv(t: Table) -> str:
    df = pd.DataFrame([[_plain(c) for c in row] for row in t.cells], index=pd.Index(t.rows, name="method"),
                      columns=[_header(c) for c in t.columns])
    return df.to_csv()


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&",
                "#": r"\#", "$": r"\$", "^": r"\^{}", "~": r"\~{}"}
_TEX_UNICODE = {"Δ": r"$\Delta$", "±": r"$\pm$", "−": r"$-$", "α": r"$\alpha$", "†": r"$^\dagger$",
                "‡": r"$^\ddagger$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "≥": r"$\geq$", "≤": r"$\leq$",
                "×": r"$\times$", "·": r"$\cdot$", "²": r"$^2$", "χ": r"$\chi$", "δ": r"$\delta$",
                "σ": r"$\sigma$", "Σ": r"$\Sigma$", "–": "--", "—": "---", "°": r"$^\circ$", "’": "'"}


def tex_escape(s: str) -> str:
    """Escape LaTeX specials and map the report's Unicode symbols to ASCII LaTeX (char by char;
    Δ_T / Δ_m become $\\Delta_T$ / $\\Delta_m$)."""
    out = []
    for part in re.split(r"(Δ_[Tm])", str(s)):
        if re.fullmatch(r"Δ_[Tm]", part):
            out.append(f"$\\Delta_{part[-1]}$")
        else:
            out.append(_escape_chars(part))
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", "".join(out))


def _escape_chars(s: str) -> str:
    out = []
    for ch in s:
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _tex_num(s: str) -> str:
    return tex_escape(s.replace("-", "−"))  # a real minus sign, not a hyphen


def _tex_cell(c: Cell) -> str:
    s = _tex_num(c.text) + (f" $\\pm$ {_tex_num(c.pm)}" if c.pm else "")
    s += {BETTER: r"$^\dagger$", WORSE: r"$^\ddagger$"}.get(c.mark, "")
    return s + (f" {{\\scriptsize [{_tex_num(c.ci[0])}, {_tex_num(c.ci[1])}]}}" if c.ci else "")


def _styles(t: Table, props: dict) -> pd.DataFrame:
    return pd.DataFrame([[props.get(c.emph, "") for c in row] for row in t.cells])


def to_latex(t: Table) -> str:
    cols = pd.MultiIndex.from_tuples([(tex_escape(c.group_name), tex_escape(f"{c.label_name} {c.arrow}".strip()))
                                      for c in t.columns])
    df = pd.DataFrame([[_tex_cell(c) for c in row] for row in t.cells],
                      index=[tex_escape(r) for r in (t.row_names or t.rows)], columns=cols)
    styles = _styles(t, {"best": "textbf: --rwrap;", "second": "underline: --rwrap;"})
    styles.index, styles.columns = df.index, df.columns
    body = df.style.apply(lambda _: styles, axis=None).to_latex(
        hrules=True, column_format="l" + "c" * len(t.columns), multicol_align="c")
    notes = "\n".join(tex_escape(n) + r"\\" for n in t.notes)
    table = ([r"\resizebox{\linewidth}{!}{%", body.rstrip("\n") + "%", "}"] if t.style.resizebox
             else [body.rstrip("\n")])
    needs = "\\usepackage{booktabs}" + (" and \\usepackage{graphicx}" if t.style.resizebox else "")
    return "\n".join([
        f"% mtlbench report table: needs {needs}",
        r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(t.title)}}}", *table, r"\par\smallskip",
        r"\begin{minipage}{\linewidth}\footnotesize", notes, r"\end{minipage}", r"\end{table}", ""])


def to_html(t: Table) -> str:
    cols = pd.MultiIndex.from_tuples([(html.escape(c.group_name), html.escape(f"{c.label_name} {c.arrow}".strip()))
                                      for c in t.columns])
    df = pd.DataFrame([[html.escape(_plain(c)) for c in row] for row in t.cells],
                      index=[html.escape(r) for r in (t.row_names or t.rows)], columns=cols)
    styles = _styles(t, {"best": "font-weight: bold;", "second": "text-decoration: underline;"})
    styles.index, styles.columns = df.index, df.columns
    table = df.style.apply(lambda _: styles, axis=None).set_caption(html.escape(t.title)).to_html()
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(t.title)}</title>"
            f"</head><body>\n{table}\n<ul>{notes}</ul>\n</body></html>\n")
