"""Publication tables by default: display names, normal-size LaTeX (no resizebox), a short
footnote (the long one in summary.md), the baseline's Δ never marked, a second-best mark that
GitHub renders; options precision / percent / resizebox / names; plots that show every
whisker and whole epochs."""
import re
import types

import matplotlib
import numpy as np
import pytest

from mtlbench.results import plots
from mtlbench.results.stats import DeltaCI
import mtlbench.cli
from test_report import fake_run

PARAMS = {"stl": 2000, "hard_sharing": 1000, "mtan": 3000}


@pytest.fixture
def store(tmp_path, monkeypatch):
    import test_report

    monkeypatch.setattr(test_report, "PARAMS", {**test_report.PARAMS, **PARAMS})
    results = tmp_path / "results"
    # accuracy (↑): mtan best, hard sharing second; err (↓): stl best, mtan second; Δ: every method < 0
    for m, (acc, err) in {"stl": (0.70, 0.20), "hard_sharing": (0.72, 0.40), "mtan": (0.75, 0.30)}.items():
        for seed in range(3):
            fake_run(results, m, seed, acc + seed / 100, err + seed / 100)
    return results


def report(results, reports, *args):
    return mtlbench.cli.main(["report", f"results_dir={results}", f"reports_dir={reports}", "n_resamples=199",
                              *args])


def cells(text: str, row: str):
    line = next(x for x in text.splitlines() if x.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_defaults_for_a_paper(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "plots=false") == 0  # the defaults
    md = (reports / "toy" / "table.md").read_text()
    stl, hs, mtan = cells(md, "STL"), cells(md, "Hard sharing"), cells(md, "MTAN")
    delta = md.splitlines()[2].strip("|").split("|").index(" Δ_T (%) ↑ ")
    assert stl[delta] == "+0.00" and hs[delta].startswith("*-") and mtan[delta].startswith("**")  # STL unmarked
    assert mtan[2].startswith("**") and hs[2].startswith("*") and not hs[2].startswith("**")  # italics second
    assert "<u>" not in md and "Protocol" not in md and len([x for x in md.splitlines() if x.startswith("- ")]) == 2
    assert "Protocol (every row)" in (reports / "toy" / "summary.md").read_text()  # the long footnote
    tex = (reports / "toy" / "table.tex").read_text()
    assert "resizebox" not in tex and "graphicx" not in tex and "Hard sharing" in tex
    assert "hard_sharing" in (reports / "toy" / "table.csv").read_text()  # the CSV keeps identifiers


def test_precision_percent_resizebox_and_names(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "names={mtan: Ours, b: Error}", "precision=1", "resizebox=true",
                  "percent=true", "format=[md,tex]", "plots=false") == 0
    md = (reports / "toy" / "table.md").read_text()
    assert cells(md, "Ours")[3].startswith("*0.3 ± 0.0") and "Error/err ↓" in md  # 'err' is no fraction
    tex = (reports / "toy" / "table.tex").read_text()
    assert r"\resizebox{\linewidth}" in tex and "graphicx" in tex
    assert report(store, reports, "dataset=toy", "columns=[params,delta]", "format=[md]", "plots=false") == 0
    header = (reports / "toy" / "table.md").read_text().splitlines()[2]
    assert header == "| method | a/acc ↑ | b/err ↓ | #params | Δ_T (%) ↑ |" and "[" not in cells(
        (reports / "toy" / "table.md").read_text(), "MTAN")[-1]  # no CI without "ci"


def test_percent_scales_fractions(tmp_path):
    from mtlbench.results.tables import FRACTIONS, Style, _num

    assert "miou" in FRACTIONS and "accuracy" in FRACTIONS and "abs_err" not in FRACTIONS
    assert Style().name("hard_sharing") == "Hard sharing" and Style().name("mtan+uw") == "MTAN + UW"
    assert Style(names=None).name("miou") == "miou" and Style().name("miou") == "mIoU"
    assert _num(91.234, precision=1) == "91.2"


def _capture(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: figs.append(fig) or [])
    return figs


def test_task_change_whiskers_inside_the_frame(monkeypatch, tmp_path):
    figs = _capture(monkeypatch)
    t = ["a", "b"]
    d = {"hs": DeltaCI(1.0, -5, 8, t, np.array([12.0, -10.0]), np.array([-20.0, -45.0]), np.array([40.0, 5.0]))}
    a = types.SimpleNamespace(opts=types.SimpleNamespace(baseline="stl", confidence=0.95), methods=["stl", "hs"],
                              runset=types.SimpleNamespace(dataset="toy"), n={"stl": 3, "hs": 3},
                              deltas={"delta_t": d})
    plots.task_changes(a, tmp_path)
    low, high = figs[0].axes[0].get_ylim()
    assert low < -45 and high > 40  # the CI ends (-45, +40) are inside the axes


def test_balancer_weight_ticks_are_whole_epochs(store, tmp_path, monkeypatch):
    for seed in (0, 1):
        fake_run(store, "dwa", seed, 0.7, 0.3, epochs=5,
                 weights=[{"a": 1.0, "b": 1.0}, {"a": 1.2, "b": 0.8}, {"a": 0.9, "b": 1.1}, {"a": 1, "b": 1},
                          {"a": 1.1, "b": 0.9}])
    figs = _capture(monkeypatch)
    assert report(store, tmp_path / "reports", "dataset=toy", "format=[md]") == 0
    (fig,) = [f for f in figs if f.axes[0].get_xlabel() == "epoch"]
    fig.canvas.draw()
    ticks = [x for x in fig.axes[0].get_xticks() if 1 <= x <= 5]
    assert ticks and all(float(x).is_integer() for x in ticks), ticks
    matplotlib.pyplot.close("all")


def test_latex_compiles_at_normal_size_if_pdflatex(store, tmp_path):
    import shutil
    import subprocess

    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "format=[tex]", "plots=false") == 0
    tex = (reports / "toy" / "table.tex").read_text()
    assert tex.isascii() and not re.search(r"\\(tiny|scriptsize|small)\b(?! ?\[)", tex.split(r"\begin{minipage}")[0])
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_footnote_defines_delta_against_the_chosen_baseline(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "plots=false", "baseline=hard_sharing") == 0
    summary = (reports / "toy" / "summary.md").read_text()
    assert "(M_method − M_hard_sharing)/M_hard_sharing" in summary and "M_stl" not in summary
    assert "positive = better than hard_sharing" in summary
    assert report(store, reports, "dataset=toy", "plots=false") == 0
    assert "(M_method − M_stl)/M_stl" in (reports / "toy" / "summary.md").read_text()
