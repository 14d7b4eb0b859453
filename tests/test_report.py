"""Reports from fabricated run folders (written through mtlbench.results.store) with known numbers,
plus one end-to-end test that trains tiny runs through the CLI and reports them."""
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

import mtlbench.cli
from mtlbench.results.stats import delta_t
from mtlbench.results.store import RunFolder, atomic_write_json, atomic_write_text

HIB = {"a": {"acc": True}, "b": {"err": False}}
PARAMS = {"stl": 2000, "hs": 1000, "big": 3000, "dwa": 1000}
CFG = {"backbone": {"name": "small_cnn", "width": 8},
       "trainer": {"epochs": 5, "batch_size": 32, "max_steps_per_epoch": None, "selection": "last",
                   "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001, "weight_decay": 0.0},
                   "scheduler": None},
       "dataset": {"name": "toy", "limit": None, "split_seed": 0}}


def fake_run(results, method, seed, acc, err, dataset="toy", role="main", tasks=("a", "b"), status="completed",
             epochs=5, weights=None):
    run_id = f"s{seed}-{method}{'-' + role if role != 'main' else ''}{len(tasks)}e{epochs}"
    folder = RunFolder(results, dataset, method, run_id)
    folder.path.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["trainer"]["epochs"] = epochs
    cfg["dataset"]["name"] = dataset
    atomic_write_text(folder.path / "config.yaml", yaml.safe_dump(cfg))
    for e, w in enumerate(weights or [{"a": 1.0, "b": 1.0}] * epochs):
        folder.append_jsonl("metrics.jsonl", {"epoch": e + 1, "balancer_weights": w})
    metrics = {t: v for t, v in (("a", {"acc": acc}), ("b", {"err": err})) if t in tasks}
    rec = {"status": status, "run_id": run_id, "method": method, "dataset": dataset, "seed": seed,
           "tasks": list(tasks), "role": role}
    if status == "completed":
        rec.update(metrics={"test": metrics, "val": metrics}, higher_is_better=HIB, backbone="small_cnn",
                   params={"total": PARAMS[method]}, flops={"total": 10 * PARAMS[method]},
                   selection={"mode": "last", "epoch": epochs}, data_sizes={"train": 100, "val": 20, "test": 20},
                   wall_time_s=10.0 + seed, finished_at=f"2026-01-01T00:00:{seed:02d}+00:00")
    else:
        rec["reason"] = "RuntimeError: boom"
    atomic_write_json(folder.run_json, rec)


STL = {0: (0.70, 0.30), 1: (0.72, 0.31), 2: (0.71, 0.29)}
HS = {0: (0.80, 0.35), 1: (0.81, 0.36), 2: (0.79, 0.34)}     # acc clearly better, err clearly worse
BIG = {0: (0.74, 0.28), 1: (0.76, 0.27), 2: (0.72, 0.29)}    # second best acc, best err


@pytest.fixture
def store(tmp_path):
    results = tmp_path / "results"
    for method, vals in (("stl", STL), ("hs", HS), ("big", BIG)):
        for seed, (acc, err) in vals.items():
            fake_run(results, method, seed, acc, err)
    return results


def report(results, reports, *args):
    """Identifiers as row names and the long footnote: these tests check content, not style
    (tests/test_tables_style.py checks the defaults)."""
    return mtlbench.cli.main(["report", f"results_dir={results}", f"reports_dir={reports}", "n_resamples=999",
                              "names=false", "footnote=long", *args])


def test_report_writes_tables_summary_and_plots(store, tmp_path, capsys):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy") == 0
    out = reports / "toy"
    for name in ("summary.csv", "summary.md", "significance.csv", "table.md", "table.tex", "table.csv",
                 "table.html", "delta_vs_params.png", "delta_vs_params.pdf", "task_changes.png", "task_changes.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "balancer_weights.png").exists()  # constant weights only
    assert (out / "delta_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = pd.read_csv(out / "summary.csv").set_index("method")
    assert list(s.index) == ["stl", "big", "hs"]
    for col in ("delta_t", "delta_t_ci_low", "delta_t_ci_high", "n_seeds", "params", "delta_m", "mean_rank"):
        assert pd.api.types.is_numeric_dtype(s[col]), col
    mean = lambda d, i: np.mean([v[i] for v in d.values()])  # noqa: E731
    expected = delta_t({"a": {"acc": mean(HS, 0)}, "b": {"err": mean(HS, 1)}},
                       {"a": {"acc": mean(STL, 0)}, "b": {"err": mean(STL, 1)}}, HIB)[0]
    assert s.loc["hs", "delta_t"] == pytest.approx(expected)
    assert s.loc["hs", "delta_t_ci_low"] <= s.loc["hs", "delta_t"] <= s.loc["hs", "delta_t_ci_high"]
    assert s.loc["stl", "delta_t"] == 0 and math.isnan(s.loc["stl", "delta_t_ci_low"])
    assert s.loc["hs", "params_rel"] == pytest.approx(0.5) and (s["n_seeds"] == 3).all()
    assert s.loc["hs", "a/acc_std"] == pytest.approx(np.std([v[0] for v in HS.values()], ddof=1))
    # significance: Welch vs stl, Holm over the 4 cells, computed here with scipy + statsmodels
    sig = pd.read_csv(out / "significance.csv").set_index(["method", "task"])
    raw = [st.ttest_ind([v[i] for v in d.values()], [v[i] for v in STL.values()], equal_var=False).pvalue
           for d in (BIG, HS) for i in (0, 1)]
    assert list(sig["p"]) == pytest.approx(raw)
    assert list(sig["p_holm"]) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    md = (out / "table.md").read_text()
    hs_row = next(line for line in md.splitlines() if line.startswith("| hs |"))
    # hs: acc up (better, †), err up (worse: lower is better, ‡); big: p_holm 0.14, unmarked
    assert list(sig["mark"].fillna("")) == ["", "", "better", "worse"]
    assert "0.8000 ± 0.0100†" in hs_row and "0.3500 ± 0.0100‡" in hs_row
    assert "†" not in "".join(_cells(md, "big")) and "‡" not in "".join(_cells(md, "big"))
    for text in ("Welch", "Holm", "α = 0.05", "n = 3", "Δ_T", "positive = better", "bootstrap",
                 "Protocol", "small_cnn (width 8)", "epochs 5", "lr 0.001", "batch size 32", "100/20/20"):
        assert text in md, text
    printed = capsys.readouterr().out
    assert "table.tex" in printed and "| hs |" in printed


def _cells(md, method):
    line = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_bold_and_underline_follow_metric_direction(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy") == 0
    md = (reports / "toy" / "table.md").read_text()
    header = _cells(md.replace("| method |", "| header |"), "header")
    acc, err = header.index("a/acc ↑"), header.index("b/err ↓")
    rows = {m: _cells(md, m) for m in ("stl", "hs", "big")}
    # acc (higher is better): hs 0.80 best, big 0.74 second; err (lower is better): big 0.28 best, stl 0.30 second
    # (second best in italics: GitHub's Markdown drops <u>)
    second = lambda c: c.startswith("*") and not c.startswith("**")  # noqa: E731
    assert rows["hs"][acc].startswith("**") and second(rows["big"][acc])
    assert not rows["stl"][acc].startswith("*")
    assert rows["big"][err].startswith("**") and second(rows["stl"][err])
    assert not rows["hs"][err].startswith("*")
    tex = (reports / "toy" / "table.tex").read_text()
    big = next(line for line in tex.splitlines() if line.startswith("big &"))
    assert re.search(r"\\textbf\{0\.2800", big) and re.search(r"\\underline\{0\.7400", big)


def _check_latex(tex: str, n_columns: int):
    assert tex.isascii()
    body = tex[tex.index(r"\begin{tabular}"):tex.index(r"\end{tabular}") + len(r"\end{tabular}")]
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
    spec = re.match(r"\\begin\{tabular\}\{([lcr]+)\}", body).group(1)
    assert len(spec) == n_columns
    rows = [r for r in body.split("\n") if r.endswith(r"\\") and "multicolumn" not in r]
    assert len(rows) >= 3
    for r in rows:
        assert r.count("&") - r.count(r"\&") == n_columns - 1, r


def test_latex_table_parses_and_compiles_if_pdflatex(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "format=[tex]") == 0
    assert not (reports / "toy" / "table.csv").exists()
    tex = (reports / "toy" / "table.tex").read_text()
    _check_latex(tex, n_columns=1 + 1 + 2 + 4 + 2)  # method, n, 2 metrics, params/rel/flops/time, Δ, rank
    assert r"$\Delta_T$" in tex and r"\dagger" in tex and "booktabs" in tex
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                       + tex + "\\end{document}\n")
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_partial_results_give_notes_not_crashes(tmp_path, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    for seed, (acc, err) in HS.items():
        fake_run(results, "hs", seed, acc, err)
    fake_run(results, "big", 0, 0.7, 0.3)
    fake_run(results, "big", 1, 0.7, 0.3, status="failed")
    assert report(results, reports, "dataset=toy") == 0  # no baseline at all
    md = (reports / "toy" / "table.md").read_text()
    assert "no completed 'stl' runs" in md and "big: 1 seed only" in md and "1 failed" in md
    assert "RuntimeError: boom" in md
    s = pd.read_csv(reports / "toy" / "summary.csv")
    assert s["delta_t"].isna().all() and set(s["method"]) == {"hs", "big"}
    # now with a baseline; candidates, a task subset and another protocol are left out with notes
    for seed, (acc, err) in STL.items():
        fake_run(results, "stl", seed, acc, err)
    fake_run(results, "hs", 5, 0.99, 0.01, role="candidate")
    fake_run(results, "hs", 6, 0.99, tasks=("a",), err=None)
    fake_run(results, "hs", 0, 0.10, 0.90, epochs=50)
    (results / "toy" / "hs" / "s9-pending").mkdir()
    assert report(results, reports, "dataset=toy", "test=mannwhitney") == 0
    md = (reports / "toy" / "table.md").read_text()
    for text in ("1 task-grouping candidate", "another task set", "another protocol", "epochs 50 vs 5",
                 "without run.json", "s9-pending", "Mann-Whitney", "cannot reach p < 0.05"):
        assert text in md, text
    s = pd.read_csv(reports / "toy" / "summary.csv").set_index("method")
    assert s.loc["hs", "n_seeds"] == 3  # nothing of the excluded runs averaged in
    assert s.loc["hs", "a/acc_mean"] == pytest.approx(0.80)


def test_delta_m_variant_names_its_sign(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "delta=delta_m", "format=[md,tex]") == 0
    md = (reports / "toy" / "table.md").read_text()
    assert "Δ_m (%) ↓" in md and "positive = WORSE" in md
    s = pd.read_csv(reports / "toy" / "summary.csv").set_index("method")
    assert s.loc["hs", "delta_m"] == pytest.approx(-((0.80 / 0.71 - 1) * 100 - (0.35 / 0.30 - 1) * 100) / 2)
    assert r"$\Delta_m$" in (reports / "toy" / "table.tex").read_text()


def test_balancer_weight_plot_for_changing_weights(store, tmp_path):
    for seed in (0, 1):
        w = [{"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 1.2, "b": 0.8}, {"a": 0.9, "b": 1.1 + seed / 10},
             {"a": 1.0, "b": 1.0}]
        fake_run(store, "dwa", seed, 0.75, 0.3, weights=w)
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "format=[md]") == 0
    assert (reports / "toy" / "balancer_weights.png").is_file() and (reports / "toy" / "balancer_weights.pdf").is_file()


def test_all_datasets_adds_cd_diagram_and_mean_rank(tmp_path):
    results, reports = tmp_path / "results", tmp_path / "reports"
    shift = {"d1": 0.0, "d2": 0.02, "d3": -0.01}
    for ds, sh in shift.items():
        for method, vals in (("stl", STL), ("hs", HS), ("big", BIG)):
            for seed, (acc, err) in vals.items():
                fake_run(results, method, seed, acc + sh, err, dataset=ds)
    assert mtlbench.cli.main(["report", f"results_dir={results}", f"reports_dir={reports}",
                              "n_resamples=199", "format=[md]"]) == 0
    for ds in shift:
        assert (reports / ds / "table.md").is_file()
    allmd = (reports / "all" / "summary.md").read_text()
    assert "mean rank" in allmd and "Friedman" in allmd and "only 3 dataset(s)" in allmd
    assert (reports / "all" / "cd_diagram.png").is_file() and (reports / "all" / "cd_diagram.pdf").is_file()
    ranks = pd.read_csv(reports / "all" / "mean_rank.csv", index_col=0)["mean_rank"]
    assert set(ranks.index) == {"stl", "hs", "big"}


@pytest.mark.parametrize("args,expected", [(["dataset=toy", "test=ttest"], "welch"),
                                           (["dataset=toy", "delta=delta_x"], "delta_t"),
                                           (["dataset=toy", "format=[pdf]"], "format"),
                                           (["dataset=nope"], "toy")])
def test_bad_report_options_are_one_line(store, tmp_path, capsys, args, expected):
    assert report(store, tmp_path / "reports", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtlbench: error:") and expected in err[0]


def test_end_to_end_tiny_runs_then_report(tmp_path, capsys):
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert mtlbench.cli.main(["run", "-m", "profile=tiny", "trainer.progress=false", "trainer.epochs=3",
                              f"results_dir={results}", "method=stl,dwa", "seed=0,1"]) == 0
    assert report(results, reports, "dataset=multimnist") == 0
    out = reports / "multimnist"
    s = pd.read_csv(out / "summary.csv").set_index("method")
    assert list(s.index) == ["stl", "dwa"] and (s["n_seeds"] == 2).all()
    assert math.isfinite(s.loc["dwa", "delta_t"]) and s.loc["dwa", "params"] < s.loc["stl", "params"]
    for name in ("table.md", "table.tex", "table.csv", "table.html", "delta_vs_params.png",
                 "task_changes.pdf", "balancer_weights.png"):  # DWA's weights move from epoch 3 on
        assert (out / name).is_file(), name
    _check_latex((out / "table.tex").read_text(), n_columns=1 + 1 + 2 + 4 + 2)


def test_metrics_filter_keeps_only_the_named_metrics(store, tmp_path):
    reports = tmp_path / "reports"
    assert report(store, reports, "dataset=toy", "metrics=[acc]", "plots=false") == 0
    summary = pd.read_csv(reports / "toy" / "summary.csv").set_index("method")
    assert not [c for c in summary.columns if c.startswith("b/err")]
    # Δ_T over task a's accuracy only: hs's relative change of the seed means
    hs, stl = np.mean([v[0] for v in HS.values()]), np.mean([v[0] for v in STL.values()])
    assert summary.loc["hs", "delta_t"] == pytest.approx(100 * (hs - stl) / stl, rel=1e-6)
