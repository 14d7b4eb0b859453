"""Task-grouping selection (mtlbench.grouping.selection): exact branch-and-bound vs brute force and the
integer program, on random tables and on the published Standley et al. Taskonomy tables;
heuristics within their certified bound; HOA means; the ``group`` command."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import mtlbench.cli
from mtlbench.grouping.selection import GroupingError, ScoreTable, candidate_groups, hoa_table, select
from mtlbench.grouping.synth import SyntheticTasks, random_table

TASKONOMY = Path(__file__).resolve().parents[2] / "shared" / "data" / "standley_taskonomy_scores"
if not TASKONOMY.is_dir():
    TASKONOMY = Path("/work/shared/data/standley_taskonomy_scores")
TABLES = sorted(TASKONOMY.glob("results*.csv"))
BUDGETS = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]


def check_selection(table, sel, budget):
    """A selection is feasible and its total is what its assignment says."""
    assert sel.cost <= budget + 1e-9
    assert set(sel.assignment) == set(table.tasks)
    assert set(sel.assignment.values()) == set(sel.networks)
    tot = sum(table.scores[table.networks.index(n), table.tasks.index(t)] for t, n in sel.assignment.items())
    assert tot == pytest.approx(sel.total)
    assert table.total(sel.networks) == pytest.approx(sel.total)


@pytest.mark.parametrize("seed", range(6))
def test_bnb_equals_brute_force_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    n_tasks = int(rng.integers(3, 7))
    table = random_table(int(rng.integers(n_tasks, 17)), n_tasks, seed=seed)
    for budget in (1, 1.5, 2, 3, n_tasks):
        try:
            brute = select(table, budget, "brute")
        except GroupingError:
            with pytest.raises(GroupingError):
                select(table, budget, "bnb")
            continue
        bnb = select(table, budget, "bnb")
        check_selection(table, bnb, budget)
        assert bnb.total == pytest.approx(brute.total, abs=1e-12)
        assert select(table, budget, "milp").total == pytest.approx(brute.total, abs=1e-9)
        dp = select(table, budget, "dp")
        check_selection(table, dp, budget)
        assert dp.total == pytest.approx(brute.total, abs=1e-9)


def test_brute_force_is_exhaustive():
    """brute force against a plain enumeration of every subset of rows (independent code)."""
    table = random_table(10, 4, seed=3)
    S = np.where(table.has, table.scores, np.inf)
    for budget in (1.5, 2.5):
        best = min(S[list(s)].min(axis=0).sum() for r in range(1, 11) for s in itertools.combinations(range(10), r)
                   if table.cost[list(s)].sum() <= budget)
        assert select(table, budget, "brute").total == pytest.approx(best)


@pytest.mark.skipif(not TABLES, reason="published Standley tables not found")
@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_bnb_on_published_taskonomy_tables(path):
    table = ScoreTable.from_csv(path)
    assert table.tasks == ["s", "d", "n", "k", "e"] and len(table.networks) in (35, 36)
    prev = np.inf
    for budget in BUDGETS:
        bnb, brute = select(table, budget, "bnb"), select(table, budget, "brute")
        check_selection(table, bnb, budget)
        assert bnb.total == pytest.approx(brute.total, abs=1e-12)
        assert bnb.total <= prev + 1e-12  # more budget never hurts
        prev = bnb.total


def test_published_setting1_budget1_is_the_all_task_network():
    """Budget 1 and no half-width single-task network covering all tasks: the 5-task net or
    nothing; hand-checked from results.csv."""
    table = ScoreTable.from_csv(TASKONOMY / "results.csv")
    sel = select(table, 1)
    assert sel.networks == ["s+d+n+k+e"]
    row = table.scores[table.networks.index("s+d+n+k+e")]
    assert sel.total == pytest.approx(row.sum())


def test_milp_agrees_with_bnb_on_bigger_tables():
    st = SyntheticTasks(6, seed=1)
    table = st.table(st.all_groups())  # 6 halves + 63 groups
    for budget in (1.5, 2, 3):
        bnb, ilp, dp = select(table, budget, "bnb"), select(table, budget, "milp"), select(table, budget, "dp")
        check_selection(table, ilp, budget)
        assert ilp.total == pytest.approx(bnb.total, abs=1e-9) and dp.total == pytest.approx(bnb.total, abs=1e-9)


def test_dp_agrees_with_milp_on_all_subsets_of_8_tasks():
    st = SyntheticTasks(8, seed=3)
    table = st.table(st.all_groups())  # 263 rows: auto picks the subset DP
    for budget in (2, 4.5):
        auto, ilp = select(table, budget), select(table, budget, "milp")
        assert auto.method == "dp"
        check_selection(table, auto, budget)
        assert auto.total == pytest.approx(ilp.total, abs=1e-9)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_heuristics_within_their_bound(method):
    st = SyntheticTasks(8, seed=2)
    table = st.table(st.all_groups())
    for budget in (2, 3.5, 5):
        opt = select(table, budget, "milp").total
        sel = select(table, budget, method)
        check_selection(table, sel, budget)
        assert sel.lower_bound <= opt + 1e-9 <= sel.total + 2e-9


def test_infeasible_budget_raises_one_line():
    table = ScoreTable.from_csv(TASKONOMY / "results.csv")
    for method in ("bnb", "dp", "milp", "brute", "greedy", "beam"):
        with pytest.raises(GroupingError, match="cannot cover every task") as info:
            select(table, 0.5, method)
        assert "\n" not in str(info.value)


def test_hoa_estimates_are_pair_means():
    tasks = ["a", "b", "c", "d"]
    single = np.array([1.0, 2.0, 3.0, 4.0])
    pair = np.array([[np.nan, 0.5, 0.7, 0.9],
                     [1.5, np.nan, 1.1, 1.9],
                     [2.0, 2.6, np.nan, 2.2],
                     [3.1, 3.3, 3.9, np.nan]])
    t = hoa_table(tasks, single, pair, [(0,), (0, 1), (0, 1, 2), (1, 2, 3), (0, 1, 2, 3)], single_cost=0.5)
    assert t.networks == ["a", "a+b", "a+b+c", "b+c+d", "a+b+c+d"]
    assert list(t.cost) == [0.5, 1, 1, 1, 1]
    assert t.scores[0, 0] == 1.0 and np.isnan(t.scores[0, 1:]).all()
    assert t.scores[1, :2].tolist() == [0.5, 1.5]
    np.testing.assert_allclose(t.scores[2, :3], [(0.5 + 0.7) / 2, (1.5 + 1.1) / 2, (2.0 + 2.6) / 2])
    np.testing.assert_allclose(t.scores[3, 1:], [(1.1 + 1.9) / 2, (2.6 + 2.2) / 2, (3.3 + 3.9) / 2])
    np.testing.assert_allclose(t.scores[4], [(0.5 + 0.7 + 0.9) / 3, (1.5 + 1.1 + 1.9) / 3,
                                             (2.0 + 2.6 + 2.2) / 3, (3.1 + 3.3 + 3.9) / 3])


def test_candidate_groups_scale_without_enumeration():
    st = SyntheticTasks(60, seed=0)
    groups = candidate_groups(st.pair_matrix(), max_size=5, n_candidates=600)
    assert len(groups) == 600 == len(set(groups))
    assert groups[:60] == [(i,) for i in range(60)]
    assert {len(g) for g in groups} == {1, 2, 3, 4, 5}
    # grown triples follow the latent clusters (clusters of 2..6 among 60 tasks: a random
    # triple lies in one cluster with probability < 0.01)
    triples = [g for g in groups if len(g) == 3]
    same = np.mean([len({st.cluster[i] for i in g}) == 1 for g in triples])
    assert same > 0.2
    sel = select(st.table(groups), 20)
    assert sel.cost <= 20


def test_candidate_path_near_exact_on_small_n():
    st = SyntheticTasks(8, seed=4)
    exact = select(st.table(st.all_groups()), 3, "milp").total
    approx = select(st.table(candidate_groups(st.pair_matrix(), 6, 120)), 3).total
    assert exact <= approx <= exact * 1.01


def test_score_table_csv_roundtrip_and_errors(tmp_path):
    t = random_table(6, 3, seed=0)
    t.to_csv(tmp_path / "t.csv")
    back = ScoreTable.from_csv(tmp_path / "t.csv")
    assert back.networks == t.networks
    np.testing.assert_allclose(back.scores, t.scores)
    neg = ScoreTable.from_csv(tmp_path / "t.csv", higher_is_better=True)
    np.testing.assert_allclose(neg.scores, -t.scores)
    (tmp_path / "bad.csv").write_text("net,cost,a\nx,1,0.3\n")
    with pytest.raises(GroupingError, match="missing column"):
        ScoreTable.from_csv(tmp_path / "bad.csv")
    (tmp_path / "nocov.csv").write_text("network,cost,a,b\nx,1,0.3,\n")
    with pytest.raises(GroupingError, match="no network has task"):
        select(ScoreTable.from_csv(tmp_path / "nocov.csv"), 2)


# ---------------------------------------------------------------------------- group command
def test_group_cli_single_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    src = TASKONOMY / "results.csv"
    (tmp_path / "scores.csv").write_text(src.read_text())
    assert mtlbench.cli.main(["group", "scores=scores.csv", "budget=2", "out=sel/out.json"]) == 0
    obj = json.loads((tmp_path / "sel" / "out.json").read_text())
    assert {"networks", "assignment", "total"} <= set(obj)
    expect = select(ScoreTable.from_csv(src), 2)
    assert obj["networks"] == expect.networks and obj["total"] == pytest.approx(expect.total)
    assert set(obj["assignment"]) == {"s", "d", "n", "k", "e"}
    assert "assignment" in capsys.readouterr().out


def test_group_cli_budget_list_and_esa_test_scores(tmp_path):
    out = tmp_path / "o.json"
    esa, test = TASKONOMY / "results_20.csv", TASKONOMY / "results_test.csv"
    assert mtlbench.cli.main(["group", f"scores={esa}", "budget=[1,2.5,5]", f"out={out}",
                              f"test_scores={test}"]) == 0
    obj = json.loads(out.read_text())
    assert set(obj) == {"1", "2.5", "5"}
    tt = ScoreTable.from_csv(test)
    for b, o in obj.items():
        assert {"networks", "assignment", "total", "test_total"} <= set(o)
        # ESA: selected on the 20% table, scored on the matching test table
        assert o["networks"] == select(ScoreTable.from_csv(esa), float(b)).networks
        hand = sum(tt.scores[tt.networks.index(n), tt.tasks.index(t)] for t, n in o["assignment"].items())
        assert o["test_total"] == pytest.approx(hand)


def test_group_cli_errors(tmp_path, capsys):
    src = TASKONOMY / "results.csv"
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot cover every task" in err and len(err.splitlines()) == 1
    assert mtlbench.cli.main(["group", "scores=missing.csv", "budget=1"]) == 2
    assert mtlbench.cli.main(["group", f"scores={src}"]) == 2
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=abc"]) == 2
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=1", "bogus=1"]) == 2
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=1", "method=nope"]) == 2
    # assign_scores: only with test_scores, and it must score every chosen network
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=1", f"assign_scores={src}"]) == 2
    (tmp_path / "few.csv").write_text("network,cost,s,d,n,k,e\ns,0.5,0.1,,,,\n")
    assert mtlbench.cli.main(["group", f"scores={src}", "budget=1", f"assign_scores={tmp_path / 'few.csv'}",
                              f"test_scores={TASKONOMY / 'results_test.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "give test_scores" in err and "assign_scores table has no row for chosen network" in err
    assert all(line.startswith("mtlbench: error:") for line in err.strip().splitlines())


def test_group_cli_higher_is_better(tmp_path):
    t = ScoreTable(["a", "b", "a+b"], [1, 1, 1], ["a", "b"], [[0.9, np.nan], [np.nan, 0.8], [0.95, 0.7]])
    t.to_csv(tmp_path / "acc.csv")
    out = tmp_path / "o.json"
    assert mtlbench.cli.main(["group", f"scores={tmp_path / 'acc.csv'}", "budget=2", "higher_is_better=true",
                              f"out={out}"]) == 0
    obj = json.loads(out.read_text())
    assert obj["assignment"] == {"a": "a+b", "b": "b"} and obj["total"] == pytest.approx(1.75)


def test_bench_grouping_prints_time_and_gap(capsys):
    assert mtlbench.cli.main(["bench", "grouping", "--n", "4", "7", "--max-exact", "7"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    methods = {(int(r[0]), r[2]) for r in lines}
    assert {(4, "exact"), (4, "bnb"), (4, "generated+milp"), (7, "milp"), (7, "generated+beam4")} <= methods
    for r in lines:
        if r[2] in ("bnb", "milp"):  # the other exact methods agree with the exact one
            assert float(r[4]) == pytest.approx(0.0, abs=1e-6)
        assert float(r[4]) >= -1e-6  # nothing beats the exact optimum
    assert "max gap" in out
