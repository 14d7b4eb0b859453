"""Standley et al. (ICML 2020), against the reference: half-size networks cost half a full
one (measured FLOPs), and the ESA curves from the published tables (../shared/data/standley_taskonomy_scores,
tstandley/taskgrouping network_selection/results*.txt): select on the early-stopped table,
assign each task among the chosen networks by the fully trained validation table, report the
test table, through ``python -m mtlbench group``. Expected values: the ``esa`` curves of the
reference's ``network_selection/make_plots.py`` (settings 1-4 = results, results_large,
results_small_data, results_alt as in its ``main.cpp``), budgets 1, 1.5, ..., 5."""
import json
from pathlib import Path

import pytest

import mtlbench.cli
from mtlbench.backbones.base import build_backbone
from mtlbench.core.model import count_flops
from mtlbench.core.registry import ARCHS
from mtlbench.methods.standley.half import half_backbone
from mtlbench.tasks import ClassificationTask
from mtlbench.tasks.dense import SegmentationTask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "standley_taskonomy_scores"
BUDGETS = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]
SETTINGS = {  # setting: (fully trained val table, early-stopped table, make_plots.py esa curve)
    1: ("results", "results_20", [0.50273, 0.48732, 0.46727, 0.46063, 0.45722, 0.45058, 0.45058, 0.44742, 0.44742]),
    2: ("results_large", "results_large_20",
        [0.35989, 0.35989, 0.34696, 0.34696, 0.34483, 0.34483, 0.34483, 0.34483, 0.34483]),
    3: ("results_small_data", "results_small_data_at4",
        [0.42998, 0.44778, 0.43055, 0.39507, 0.40381, 0.39404, 0.40278, 0.39404, 0.40278]),
    4: ("results_alt", "results_alt_20",
        [0.684042, 0.684042, 0.677567, 0.680649, 0.677349, 0.676049, 0.676049, 0.675976, 0.675976]),
}
# Cells the published tables cannot give as plotted, with what they give instead:
# - setting 1, budget 1: only the all-in-one network fits; its test losses sum to 0.50278
#   (make_plots.py's own hoa / worst / random curves plot 0.50278 there, esa 0.50273);
# - setting 3, budget 5: the reference assigns each task by its TEST loss among the chosen
#   networks (main.cpp translate_scores_to_test_set + score_solution: 0.40278); assigned by
#   the fully trained validation losses (leak-free) the test total is 0.40316.
BY_VALIDATION = {(1, 1): 0.50278, (3, 5): 0.40316}
BY_TEST = {(1, 1): 0.50278}


def _curve(tmp_path, scores, assign, test):
    out = tmp_path / f"{scores}-{assign}.json"
    assert mtlbench.cli.main(["group", f"scores={DATA / scores}.csv", f"assign_scores={DATA / assign}.csv",
                              f"test_scores={DATA / test}.csv", f"budget={BUDGETS}", f"out={out}"]) == 0
    res = json.loads(out.read_text())
    return [res[f"{b:g}"]["test_total"] for b in BUDGETS]


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/standley_taskonomy_scores absent")
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_esa_curves_reproduce_the_paper(tmp_path, setting):
    val, esa, paper = SETTINGS[setting]
    for assign, exceptions in ((val, BY_VALIDATION), (f"{val}_test", BY_TEST)):
        got = _curve(tmp_path, esa, assign, f"{val}_test")
        want = [exceptions.get((setting, b), p) for b, p in zip(BUDGETS, paper)]
        assert got == pytest.approx(want, abs=6e-6), (setting, assign)
    # the early-stopped table's own assignment (the default) is not the paper's curve
    got = _curve(tmp_path, esa, esa, f"{val}_test")
    assert sum(abs(g - p) > 6e-6 for g, p in zip(got, paper)) >= 4


@pytest.mark.parametrize("bnode,shape,task", [
    ({"name": "small_resnet", "width": 16, "layers": [1, 1, 1, 1], "output_stride": 8, "head": "conv",
      "head_channels": None}, (3, 32, 32), SegmentationTask("seg", num_classes=7)),
    ({"name": "small_cnn", "width": 16, "depths": [1, 1, 1]}, (1, 36, 36), ClassificationTask("left", 10))])
def test_half_networks_cost_half_the_flops(bnode, shape, task):
    def build(node):
        return ARCHS.get("hard_sharing")(lambda: build_backbone(node, shape), [task])

    node, info = half_backbone(build, bnode, shape)
    full, half = count_flops(build(bnode), shape)["total"], count_flops(build(node), shape)["total"]
    assert 0.45 <= half / full <= 0.55 and info["cost_ratio"] == pytest.approx(half / full, abs=1e-4)
    assert count_flops(build({**bnode, "width": 8}), shape)["total"] / full < 0.3  # width // 2: a quarter
    if "head_channels" in bnode:  # the head (decoder) is kept: its hidden width is the full network's
        assert node["head_channels"] == 128 and build(node).heads["seg"][0].out_channels == 128
