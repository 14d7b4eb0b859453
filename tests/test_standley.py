"""method=standley end to end (profile=tiny): candidates are cached ordinary runs (role
candidate), HOA estimates are pair means, ESA selects on short runs and reports fully trained
ones, the main run carries the grouped solution's metrics and params."""
import json

import numpy as np
import pytest

from mtlbench.results.store import iter_runs

SCENES3 = ["dataset=scenes", "dataset.n_train=32", "dataset.n_val=16", "dataset.n_test=16",
           "dataset.tasks=[seg,depth,normal]", "backbone.width=8"]


def runs(results_dir):
    main, cand = [], []
    for folder, rec in iter_runs(results_dir):
        (cand if rec.get("role") == "candidate" else main).append((folder, rec))
    return main, cand


def test_hoa_multimnist_main_run_and_cache(run_cli, results_dir):
    assert run_cli("method=standley") == 0
    main, cand = runs(results_dir)
    assert len(main) == 1 and len(cand) == 5  # 2 singles, 2 half singles, the pair (= all-in-one)
    folder, rec = main[0]
    recs_by_id = {r["run_id"]: r for _, r in cand}
    assert rec["role"] == "main" and rec["method"] == "standley" and rec["tasks"] == ["left", "right"]
    g = json.loads((folder / "grouping.json").read_text())
    for name in ("grouping.csv", "grouping.md", "grouping.png"):
        assert (folder / name).stat().st_size > 0
    assert set(g["budgets"]) == {"1", "1.5", "2"} and g["report_budget"] == 1.0
    # half-size singles: encoder width sized to half the measured FLOPs (small_cnn 16 -> 11)
    for t, h in g["half_networks"].items():
        half_rec = recs_by_id[g["candidates_full"][f"{t}_half"]["run_id"]]
        full_rec = recs_by_id[g["candidates_full"][t]["run_id"]]
        assert h["width"] == 11 and 0.45 <= h["cost_ratio"] <= 0.55
        assert half_rec["flops"]["total"] / full_rec["flops"]["total"] == pytest.approx(h["cost_ratio"], abs=1e-4)
    chosen = g["budgets"]["1"]
    assert {"networks", "assignment", "predicted_total", "realised_test_total"} <= set(chosen)
    # the run's metrics are each task's from its assigned network; params the chosen ones' sum
    recs = {r["run_id"]: r for _, r in cand}
    nets = {n: recs[g["candidates_full"][n]["run_id"]] for n in chosen["networks"]}
    for t, n in chosen["assignment"].items():
        assert rec["metrics"]["test"][t] == nets[n]["metrics"]["test"][t]
        assert rec["losses"]["val"][t] == nets[n]["losses"]["val"][t]
    assert rec["params"]["total"] == sum(r["params"]["total"] for r in nets.values())
    assert rec["flops"]["total"] == sum(r["flops"]["total"] for r in nets.values())
    assert np.isfinite(rec["procedure_info"]["delta_t_vs_single"])
    assert all(r["role"] == "candidate" for _, r in cand)
    # a second search (forced main run) trains nothing: every candidate comes from the store
    assert run_cli("method=standley", "force=true") == 0
    main2, cand2 = runs(results_dir)
    assert len(main2) == 2 and len(cand2) == 5
    info = [r["procedure_info"] for _, r in main2]
    assert any(i["trained"] == [] and len(i["reused"]) == 5 for i in info)
    # another strategy on the same store reuses the shared candidates too
    assert run_cli("method=standley", "grouping.strategy=os", "grouping.half_singles=false") == 0
    os_rec = [r for _, r in runs(results_dir)[0] if r["procedure_info"]["strategy"] == "os"][0]
    assert os_rec["procedure_info"]["trained"] == []


def test_hoa_estimates_from_pair_runs(run_cli, results_dir):
    assert run_cli("method=standley", *SCENES3, "grouping.half_singles=false", "grouping.budget=[1,2,3]",
                   "grouping.report_budget=2") == 0
    main, cand = runs(results_dir)
    g = json.loads((main[0][0] / "grouping.json").read_text())
    recs = {}
    for _, r in cand:
        recs.setdefault(tuple(r["tasks"]), r)
    assert {("seg",), ("depth",), ("normal",), ("seg", "depth"), ("seg", "normal"), ("depth", "normal"),
            ("seg", "depth", "normal")} <= set(recs)
    rows = {r["network"]: r for r in g["score_table"]}
    loss = lambda grp, t: recs[grp]["losses"]["val"][t]  # noqa: E731
    tri = rows["seg+depth+normal"]
    assert tri["seg"] == pytest.approx((loss(("seg", "depth"), "seg") + loss(("seg", "normal"), "seg")) / 2)
    assert tri["depth"] == pytest.approx((loss(("seg", "depth"), "depth") + loss(("depth", "normal"), "depth")) / 2)
    assert tri["normal"] == pytest.approx((loss(("seg", "normal"), "normal") + loss(("depth", "normal"), "normal")) / 2)
    assert rows["seg+depth"]["seg"] == loss(("seg", "depth"), "seg")
    assert rows["depth"]["depth"] == loss(("depth",), "depth")
    assert g["budgets"]["3"]["predicted_total"] <= g["budgets"]["1"]["predicted_total"] + 1e-12
    # above max_exhaustive tasks the HOA rows are generated from the pair scores, not enumerated
    assert run_cli("method=standley", *SCENES3, "grouping.half_singles=false", "grouping.budget=[1,2,3]",
                   "grouping.report_budget=2", "grouping.max_exhaustive=2", "grouping.n_candidates=4") == 0
    main = [fr for fr in runs(results_dir)[0] if fr[0].name != main[0][0].name]
    g2 = json.loads((main[0][0] / "grouping.json").read_text())
    nets = [r["network"] for r in g2["score_table"]]
    assert nets[:3] == ["seg", "depth", "normal"] and len(nets) == 4
    assert main[0][1]["procedure_info"]["trained"] == [] or "+" in main[0][1]["procedure_info"]["trained"][0]


def test_esa_selects_on_short_runs_and_reports_full_ones(run_cli, results_dir):
    assert run_cli("method=standley", "grouping.strategy=esa", "trainer.epochs=4", "grouping.esa_fraction=0.5",
                   "grouping.half_singles=false") == 0
    main, cand = runs(results_dir)
    short = [r for _, r in cand if r["epochs"] == 2]
    full = [r for _, r in cand if r["epochs"] == 4]
    # ESA candidates (all 3 subsets) ran 2 of the 4 epochs; baselines / chosen ones fully
    assert sorted(tuple(r["tasks"]) for r in short) == [("left",), ("left", "right"), ("right",)]
    assert len(full) >= 3
    g = json.loads((main[0][0] / "grouping.json").read_text())
    short_by = {tuple(r["tasks"]): r for r in short}
    full_by = {tuple(r["tasks"]): r for r in full}
    for e in g["budgets"].values():
        pred = sum(short_by[tuple(n.split("+"))]["losses"]["val"][t] for t, n in e["selection_assignment"].items())
        real = sum(full_by[tuple(n.split("+"))]["losses"]["test"][t] for t, n in e["assignment"].items())
        assert e["predicted_total"] == pytest.approx(pred)
        assert e["realised_test_total"] == pytest.approx(real)
        # each task served by the chosen network with its best FULLY TRAINED val loss (the paper's ESA)
        for t, n in e["assignment"].items():
            have = [m for m in e["networks"] if t in m.split("+")]
            assert full_by[tuple(n.split("+"))]["losses"]["val"][t] == min(
                full_by[tuple(m.split("+"))]["losses"]["val"][t] for m in have)
    assert all(g["candidates_full"][n]["epochs"] == 4 for n in g["budgets"]["1"]["networks"])


@pytest.mark.parametrize("override,needle", [
    ("grouping.strategy=bogus", "grouping.strategy"),
    ("grouping.report_budget=0.5", "report_budget"),
    ("grouping.metric=nosuchmetric", "nosuchmetric"),
])
def test_bad_settings_one_line(run_cli, override, needle, capsys):
    assert run_cli("method=standley", "grouping.half_singles=false", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
