"""README's "Adding a method" / "Adding a dataset" templates work as written: the code and
YAML blocks are taken from README.md, registered as a newcomer would (a plugin package's
module and a config folder on hydra.searchpath), pass the contract tests and run."""
import re
from pathlib import Path

import pytest

import test_contract_archs as archs
import test_contract_balancers as bals
from mtlbench.core.registry import ARCHS, BALANCERS
from mtlbench.results.store import iter_runs

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block(after: str, lang: str) -> str:
    """The first ```lang block after the heading text ``after``."""
    start = README.index(after)
    m = re.search(rf"```{lang}\n(.*?)```", README[start:], re.S)
    return m.group(1)


@pytest.fixture
def plugin(tmp_path):
    code = block("**A balancer**", "python") + "\n" + block("**An architecture**", "python")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_plugin"})
    conf = tmp_path / "conf"
    for group, after in (("balancer", "**A balancer**"), ("method", "**A preset**")):
        (conf / group).mkdir(parents=True)
        text = block(after, "yaml")
        name = "my_balancer" if group == "balancer" else "my_method"
        (conf / group / f"{name}.yaml").write_text(text)
    (conf / "arch").mkdir()
    (conf / "arch" / "my_arch.yaml").write_text("name: my_arch\nmy_option: 1\n")
    yield conf
    BALANCERS._items.pop("my_balancer", None)
    ARCHS._items.pop("my_arch", None)


def test_readme_templates_pass_the_contracts_and_run(plugin, run_cli, results_dir):
    bals.test_every_reached_parameter_gets_a_finite_gradient("my_balancer")
    bals.test_identical_tasks_give_the_update_of_equal_weights("my_balancer")
    bals.test_state_dict_round_trip_gives_a_bit_identical_next_step("my_balancer")
    for family in archs.FAMILIES:
        model, shape = archs.build("my_arch", family)
        built = (model.eval(), archs.example(shape))
        archs.test_forward_tasks_returns_exactly_the_subset(built)
        archs.test_a_task_loss_reaches_only_shared_and_its_own_parameters(built)
        archs.test_parameter_counts_are_the_sum_of_declared_parts(built)
    assert run_cli(f"hydra.searchpath=[file://{plugin}]", "method=my_method") == 0
    (folder, rec), = list(iter_runs(results_dir))
    assert (rec["method"], rec["arch"], rec["balancer"]) == ("my_method", "my_arch", "my_balancer")
