"""The wiring, end to end through the CLI: one run per architecture, one per balancer, one
per procedure, one per embedded dataset (not their product: the per-registry contract tests
prove each part); names come from the registry together with the config folders."""
import pytest

import mtlbench.cli
from mtlbench.core.balancer import Balancer
from mtlbench.core.registry import ALL, ARCHS, BALANCERS, PROCEDURES, load_all
from mtlbench.engine import configs
from mtlbench.results.store import iter_runs

load_all()
# embedded datasets at a size that keeps the generated caches small
EMBEDDED = {"multimnist": [], "scenes": ["dataset=scenes", "dataset.n_train=32", "dataset.n_val=16",
                                         "dataset.n_test=16", "dataset.size=[32,32]"],
            "yeast": ["dataset=yeast", "dataset.max_tasks=5", "backbone.width=16"]}
# each procedure through the method preset that uses it
PROCEDURE_PRESETS = {"single": "hard_sharing", "adashare": "adashare", "standley": "standley", "ltb": "ltb",
                     "tag_grouping": "tag_grouping"}


def main_run(results_dir):
    runs = [(f, r) for f, r in iter_runs(results_dir) if (r.get("role") or "main") == "main"]
    assert len(runs) == 1
    folder, rec = runs[0]
    assert rec["status"] == "completed" and (folder / "run.json").is_file()
    assert set(rec["metrics"]) == {"test", "val"} and set(rec["metrics"]["test"]) == set(rec["tasks"])
    assert rec["params"]["total"] > 0 and rec["flops"]["total"] > 0
    return folder, rec


@pytest.mark.parametrize("group", configs.GROUPS)
def test_every_registered_name_has_its_config_and_every_config_its_name(group):
    assert set(configs.yaml_options(group, package_only=True)) == set(ALL[group].names())
    assert set(mtlbench.cli.config_options(group)) == set(ALL[group].names())


def test_presets_state_their_choices_once():
    for preset in mtlbench.cli.config_options("method"):
        arch, balancer, procedure = configs.preset_choices(preset)
        assert arch in ARCHS and balancer in BALANCERS and procedure in PROCEDURES
        assert configs.compose([f"method={preset}"])["preset"] == preset


@pytest.mark.parametrize("arch", ARCHS.names())
def test_one_run_per_architecture(arch, run_cli, results_dir):
    assert run_cli(f"arch={arch}") == 0
    _, rec = main_run(results_dir)
    assert rec["arch"] == arch and rec["method"] in (f"{arch}+equal", "hard_sharing")


@pytest.mark.parametrize("balancer", BALANCERS.names())
def test_one_run_per_balancer(balancer, run_cli, results_dir):
    assert run_cli(f"balancer={balancer}") == 0
    _, rec = main_run(results_dir)
    assert rec["balancer"] == balancer


@pytest.mark.parametrize("procedure", PROCEDURES.names())
def test_one_run_per_procedure(procedure, run_cli, results_dir):
    assert procedure in PROCEDURE_PRESETS, f"procedure '{procedure}' has no preset in tests/test_contract_cli.py"
    preset = PROCEDURE_PRESETS[procedure]
    extra = EMBEDDED["scenes"] if procedure == "adashare" else []
    assert run_cli(f"method={preset}", *extra) == 0
    folder, rec = main_run(results_dir)
    assert rec["method"] == preset == folder.parent.name and rec["procedure"] == procedure


@pytest.mark.parametrize("dataset", list(EMBEDDED))
def test_one_run_per_embedded_dataset(dataset, run_cli, results_dir):
    assert run_cli(*EMBEDDED[dataset]) == 0
    folder, rec = main_run(results_dir)
    assert rec["dataset"] == dataset == folder.parents[1].name


def test_a_registered_balancer_without_a_yaml_runs(run_cli, results_dir):
    @BALANCERS.register("tmp_halves")
    class Halves(Balancer):
        def combine(self, losses):
            return 0.5 * sum(losses.values())

    try:
        assert "tmp_halves" in mtlbench.cli.config_options("balancer")
        assert run_cli("balancer=tmp_halves") == 0
        assert main_run(results_dir)[1]["balancer"] == "tmp_halves"
    finally:
        BALANCERS._items.pop("tmp_halves")


def test_a_dataset_yaml_without_a_backbone_is_one_line(run_cli, tmp_path, capsys):
    """A tabular dataset config that keeps the default image backbone: one line naming the fix."""
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "yeast_plain.yaml").write_text(
        "# @package _global_\ndataset:\n  name: yeast\n  root: null\n  split_seed: 0\n  limit: null\n  tasks: null\n")
    code = run_cli(f"hydra.searchpath=[file://{tmp_path}]", "dataset=yeast_plain")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "backbone small_cnn needs image inputs" in err[0] and "backbone=mlp" in err[0]


def test_config_nodes_are_composed_with_the_search_path(tmp_path):
    """Procedures' child runs get config nodes through Hydra: a plugin's config is found."""
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "hs_plugin.yaml").write_text("name: hard_sharing\nnote: from a plugin\n")
    with pytest.raises(ValueError, match="unknown arch 'hs_plugin'"):
        configs.config_node("arch", "hs_plugin")
    configs.set_searchpath([f"file://{tmp_path}"])
    try:
        assert configs.config_node("arch", "hs_plugin") == {"name": "hard_sharing", "note": "from a plugin"}
    finally:
        configs.set_searchpath([])
