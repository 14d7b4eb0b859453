"""End-to-end runs through the in-process CLI (profile=tiny), and the label-mask contract."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
import yaml

from mtlbench.core.data import MTLData, TensorSplit
from mtlbench.core.registry import ARCHS, BALANCERS
from mtlbench.backbones.base import build_backbone
from mtlbench.results.store import iter_runs
from mtlbench.tasks import Accuracy, ClassificationTask
from mtlbench.engine.trainer import Trainer

RUN_ID = re.compile(r"s0-[0-9a-f]{8}")


def only_run(results_dir):
    runs = list(iter_runs(results_dir))
    assert len(runs) == 1, [str(p) for p, _ in runs]
    return runs[0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, make_run_cli):
    """The default tiny run (hard_sharing, seed 0): (folder, record)."""
    results = tmp_path_factory.mktemp("default_run") / "results"
    assert make_run_cli(results)() == 0
    return only_run(results)


@pytest.fixture(scope="module")
def stl_run(tmp_path_factory, make_run_cli):
    results = tmp_path_factory.mktemp("stl_run") / "results"
    assert make_run_cli(results)("method=stl") == 0
    return only_run(results)


def _is_scores(node, tasks):
    assert set(node) == set(tasks)
    for task, by_metric in node.items():
        assert by_metric and all(isinstance(v, float) for v in by_metric.values()), (task, by_metric)


# ----------------------------------------------------------------- run.json schema
def test_run_json_schema(default_run):
    folder, rec = default_run
    assert rec["status"] == "completed"
    assert rec["method"] == "hard_sharing" and rec["dataset"] == "multimnist" and rec["seed"] == 0
    assert rec["tasks"] == ["left", "right"]
    assert RUN_ID.fullmatch(rec["run_id"])
    assert set(rec["metrics"]) == {"test", "val"}
    for split in ("test", "val"):
        _is_scores(rec["metrics"][split], rec["tasks"])
        for task, by_metric in rec["metrics"][split].items():
            assert not any("loss" in m for m in by_metric)
            assert all(0.0 <= v <= 1.0 for v in by_metric.values())  # accuracies
    for split in ("test", "val", "train"):
        assert set(rec["losses"][split]) == {"left", "right"}
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in rec["losses"][split].values())
    assert rec["higher_is_better"] == {"left": {"accuracy": True}, "right": {"accuracy": True}}
    assert (rec["arch"], rec["balancer"], rec["procedure"], rec["backbone"]) == (
        "hard_sharing", "equal", "single", "small_cnn")
    assert isinstance(rec["params"]["total"], int) and rec["params"]["total"] > 0
    assert set(rec["params"]["per_task"]) == {"left", "right"}
    assert rec["flops"]["total"] > 0 and set(rec["flops"]["per_task"]) == {"left", "right"}
    assert isinstance(rec["wall_time_s"], float) and rec["wall_time_s"] > 0
    assert "torch" in rec["versions"] and rec["versions"]["torch"] == torch.__version__
    assert "git_commit" in rec
    assert rec["selection"] == {"mode": "last", "epoch": 1}
    assert rec["data_sizes"] == {"train": 64, "val": 64, "test": 64}  # profile=tiny: dataset.limit=64


def test_run_folder_layout(default_run):
    folder, rec = default_run
    results = folder.parents[2]
    assert folder == results / "multimnist" / "hard_sharing" / rec["run_id"]
    assert folder.name == rec["run_id"]
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["seed"] == 0 and cfg["arch"]["name"] == "hard_sharing"
    assert cfg["trainer"]["epochs"] == 1 and cfg["dataset"]["limit"] == 64
    assert (folder / ".hydra" / "overrides.yaml").is_file()
    assert not (folder / ".lock").exists()  # released
    assert not list(folder.glob("*.tmp"))


def test_metrics_jsonl_one_line_per_epoch(default_run):
    folder, rec = default_run
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == rec["epochs"] == 1
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1]
    assert set(rows[0]["train_loss"]) == {"left", "right"}
    assert rows[0]["val"] == rec["metrics"]["val"]  # selection=last: the last epoch's val
    assert rows[0]["val_loss"] == rec["losses"]["val"]
    assert rows[0]["train_loss"] == rec["losses"]["train"]


def test_params_and_flops_structure(default_run, stl_run):
    _, hs = default_run
    _, stl = stl_run
    # hard sharing: each task needs the shared backbone, so the per-task counts overlap
    assert all(n < hs["params"]["total"] for n in hs["params"]["per_task"].values())
    assert sum(hs["params"]["per_task"].values()) > hs["params"]["total"]
    assert all(f < hs["flops"]["total"] for f in hs["flops"]["per_task"].values())
    # STL: independent networks, the total is the sum
    assert sum(stl["params"]["per_task"].values()) == stl["params"]["total"]
    assert sum(stl["flops"]["per_task"].values()) == stl["flops"]["total"]
    assert hs["params"]["total"] < stl["params"]["total"]
    assert stl["method"] == "stl" and stl["arch"] == "independent"


# ----------------------------------------------------------------- determinism, ids
def test_same_seed_is_deterministic(default_run, tmp_path, make_run_cli):
    _, first = default_run
    assert make_run_cli(tmp_path / "again")() == 0
    _, second = only_run(tmp_path / "again")
    assert second["run_id"] == first["run_id"]  # results_dir is not part of the id
    assert second["metrics"] == first["metrics"]
    assert second["losses"] == first["losses"]


def test_other_seed_other_run_id(default_run, run_cli, results_dir):
    _, first = default_run
    assert run_cli("seed=1") == 0
    folder, rec = only_run(results_dir)
    assert rec["seed"] == 1
    assert re.fullmatch(r"s1-[0-9a-f]{8}", rec["run_id"])
    assert rec["run_id"] != first["run_id"]
    assert rec["run_id"].split("-")[1] != first["run_id"].split("-")[1]


def test_rerun_skips_and_force_runs_again(run_cli, results_dir, capsys):
    assert run_cli() == 0
    folder, rec = only_run(results_dir)
    run_json = folder / "run.json"
    content, mtime = run_json.read_bytes(), run_json.stat().st_mtime_ns
    capsys.readouterr()

    assert run_cli() == 0
    out = capsys.readouterr().out
    assert any("skip" in line for line in out.splitlines())
    assert "epoch 1" not in out  # nothing was trained
    assert run_json.read_bytes() == content and run_json.stat().st_mtime_ns == mtime

    assert run_cli("force=true") == 0
    runs = dict((p.name, r) for p, r in iter_runs(results_dir))
    assert len(runs) == 2 and rec["run_id"] in runs
    forced = next(r for name, r in runs.items() if name != rec["run_id"])
    assert forced["status"] == "completed"
    assert forced["run_id"].startswith(rec["run_id"] + "-f")
    assert forced["metrics"] == rec["metrics"]  # same config and seed
    assert run_json.read_bytes() == content and run_json.stat().st_mtime_ns == mtime


# ----------------------------------------------------------------- overrides
def test_arch_override_renames_the_method(run_cli, results_dir):
    assert run_cli("method=stl", "arch=hard_sharing") == 0
    folder, rec = only_run(results_dir)
    assert rec["method"] == "hard_sharing+equal"
    assert folder.parent.name == "hard_sharing+equal"
    assert rec["arch"] == "hard_sharing" and rec["balancer"] == "equal"


def test_static_balancer_with_weights(run_cli, results_dir):
    assert run_cli("balancer=static", "balancer.weights={left:2.0}") == 0
    folder, rec = only_run(results_dir)
    assert rec["status"] == "completed" and rec["balancer"] == "static"
    assert rec["method"] == "hard_sharing+static"
    row = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["balancer_weights"] == {"left": 2.0, "right": 1.0}


def test_static_balancer_unknown_task_fails_cleanly(run_cli, results_dir, capsys):
    assert run_cli("balancer=static", "balancer.weights={middle:2.0}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtlbench: error:") and "middle" in err[0]
    assert not results_dir.exists()  # a configuration error found before training writes nothing


def test_selection_best(run_cli, results_dir):
    assert run_cli("trainer.selection=best", "trainer.epochs=2") == 0
    folder, rec = only_run(results_dir)
    assert rec["selection"]["mode"] == "best"
    assert rec["selection"]["epoch"] in (1, 2)
    assert rec["epochs"] == 2
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    chosen = rows[rec["selection"]["epoch"] - 1]
    assert rec["metrics"]["val"] == chosen["val"] and rec["losses"]["val"] == chosen["val_loss"]


def test_task_subset(run_cli, results_dir):
    assert run_cli("dataset.tasks=[right]") == 0
    _, rec = only_run(results_dir)
    assert rec["tasks"] == ["right"]
    assert set(rec["metrics"]["test"]) == {"right"} and set(rec["params"]["per_task"]) == {"right"}


# ----------------------------------------------------------------- label masks
def test_masked_loss_all_false_is_exact_zero_with_gradient():
    task = ClassificationTask("t", 3)
    pred = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 1])
    loss = task.loss(pred, target, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_masked_loss_is_mean_over_labelled_samples():
    task = ClassificationTask("t", 3)
    pred = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 1, 0])
    mask = torch.tensor([True, False, True, False, True])
    loss = task.loss(pred, target, mask)
    expected = F.cross_entropy(pred[mask].detach(), target[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.count_nonzero(pred.grad[~mask]) == 0  # unlabelled rows get no gradient
    assert torch.count_nonzero(pred.grad[mask]) > 0
    # no mask = all labelled
    full = task.loss(pred.detach(), target, torch.ones(5, dtype=torch.bool))
    assert full.item() == pytest.approx(F.cross_entropy(pred.detach(), target).item(), rel=1e-6)


def test_masked_accuracy_counts_labelled_samples_only():
    acc = Accuracy()
    pred = torch.eye(3)[[0, 1, 2, 0]] * 5
    target = torch.tensor([0, 1, 0, 1])  # hits: T T F F
    acc.update(pred, target, torch.tensor([True, True, False, False]))
    assert acc.compute() == 1.0
    acc.update(pred, target, torch.tensor([False, False, True, False]))
    assert acc.compute() == pytest.approx(2 / 3)
    empty = Accuracy()
    empty.update(pred, target, torch.zeros(4, dtype=torch.bool))
    assert math.isnan(empty.compute())


def _masked_data():
    g = torch.Generator().manual_seed(0)
    n = 8
    x = torch.randn(n, 6, generator=g)
    targets = {"a": torch.randint(0, 3, (n,), generator=g), "b": torch.randint(0, 3, (n,), generator=g)}
    # task b is labelled only in the second half: the first batch of 4 has no b label
    masks = {"a": torch.ones(n, dtype=torch.bool), "b": torch.arange(n) >= 4}
    split = TensorSplit(x, targets, masks)
    tasks = [ClassificationTask("a", 3), ClassificationTask("b", 3)]
    return MTLData("masked", tasks, (6,), {"train": split, "val": split, "test": split})


def test_tensor_split_batches_carry_masks():
    data = _masked_data()
    batches = list(data.splits["train"].batches(4))
    assert len(batches) == 2
    assert not batches[0].masks["b"].any() and batches[1].masks["b"].all()
    assert batches[0].masks["a"].all()


def test_trainer_step_with_an_unlabelled_task_in_the_batch():
    data = _masked_data()
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone({"name": "mlp", "width": 8, "depth": 1}, (6,)),
                                      data.tasks)
    balancer = BALANCERS.get("equal")(data.task_names)
    trainer = Trainer(epochs=1, batch_size=4, device="cpu", progress=False)
    session = trainer.prepare(model, balancer, data.tasks)
    head_b = [p.detach().clone() for p in model.heads["b"].parameters()]
    first = next(data.splits["train"].batches(4))  # b has no label here

    mean_loss = trainer.train_pass(session, [first])
    a_loss, b_loss = mean_loss["a"], mean_loss["b"]
    assert b_loss == 0.0 and a_loss > 0
    # the unlabelled task's head got an all-zero gradient and did not move
    for p, before in zip(model.heads["b"].parameters(), head_b):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
        assert torch.equal(p.detach(), before)
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.heads["a"].parameters())

    # the evaluation loss of b is the mean over its labelled samples only
    scores, losses = trainer.evaluate(model, data.splits["val"], data.tasks)
    model.eval()
    with torch.no_grad():
        pred_b = model(data.splits["val"].x)["b"]
    mask = data.splits["val"].masks["b"]
    expected = F.cross_entropy(pred_b[mask], data.splits["val"].targets["b"][mask]).item()
    assert losses["b"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= scores["b"]["accuracy"] <= 1.0
