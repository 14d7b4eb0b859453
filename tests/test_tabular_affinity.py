"""Lookahead task affinity (TAG) and grouping at small n (issue 9, item 4); the full
139-task School grouping is a documented command, not a test."""
import numpy as np
import pytest
import torch

from mtlbench.grouping.affinity import grouping_scores, labelled_subset, lookahead_affinity, probe_batch
from mtlbench.backbones.base import build_backbone
from mtlbench.core.data import MTLData, TensorSplit
from mtlbench.core.registry import ARCHS
from mtlbench.results.store import iter_runs
from mtlbench.tasks.tabular import RegressionTask


def toy(n=240, seed=0):
    """Four regression tasks, one sample each: a and b share a target, c = −a (the same
    feature, a flipped head), d is unrelated noise."""
    g = torch.Generator().manual_seed(seed)
    tasks = [RegressionTask(t) for t in "abcd"]

    def split():
        x = torch.randn(n, 5, generator=g)
        owner = torch.arange(n) % 4
        y = {"a": x[:, 0], "b": x[:, 0], "c": -x[:, 0], "d": torch.randn(n, generator=g)}
        masks = {t: owner == k for k, t in enumerate("abcd")}
        return TensorSplit(x, {k: torch.where(masks[k], v, torch.zeros_like(v)) for k, v in y.items()}, masks)

    return MTLData("toy", tasks, (5,), {"train": split(), "val": split(), "test": split()})


def test_lookahead_affinity_matches_a_manual_sgd_step_and_leaves_model_untouched():
    data = toy()
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone({"name": "resmlp", "width": 8, "depth": 1}, (5,)),
                                      data.tasks)
    batch = probe_batch(data.splits["train"], data.task_names, torch.Generator().manual_seed(0), probe_per_task=20)
    assert all(int(batch.masks[t].sum()) == 20 for t in data.task_names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = lookahead_affinity(model, batch, data.tasks, lookahead_lr=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # manual: step the backbone on task a's loss, measure every task's loss ratio
    import copy

    ref = copy.deepcopy(model).eval()
    preds = ref(batch.x)
    base = [t.loss(preds[t.name], batch.targets[t.name], batch.masks[t.name]).item() for t in data.tasks]
    la = data.tasks[0].loss(preds["a"], batch.targets["a"], batch.masks["a"])
    grads = torch.autograd.grad(la, list(ref.backbone.parameters()))
    with torch.no_grad():
        for p, gr in zip(ref.backbone.parameters(), grads):
            p -= 0.05 * gr
        after = ref(batch.x)
    for j, t in enumerate(data.tasks):
        want = 1 - t.loss(after[t.name], batch.targets[t.name], batch.masks[t.name]).item() / base[j]
        assert z[0, j] == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_affinity_ranks_the_related_task_above_the_unrelated_one():
    from mtlbench.grouping.affinity import tag_affinity
    from mtlbench.core.registry import BALANCERS
    from mtlbench.engine.trainer import Trainer

    data = toy(n=400)
    torch.manual_seed(0)
    model = ARCHS.get("hard_sharing")(lambda: build_backbone({"name": "resmlp", "width": 16, "depth": 1}, (5,)),
                                      data.tasks)
    trainer = Trainer(epochs=2, batch_size=32, progress=False, device="cpu")
    rows = []
    z = tag_affinity(model, BALANCERS.get("equal")(data.task_names), data, trainer, every=2,
                     lookahead_lr=0.05, probe_per_task=40, on_epoch=rows.append)
    assert z.shape == (4, 4) and len(rows) == 2 and np.isfinite(z).all()
    a, b, c, d = 0, 1, 2, 3
    assert z[a, b] > 0 and z[b, a] > 0 and z[a, c] > 0   # same feature: a step on one helps the other
    assert z[a, b] > z[a, d] and z[b, a] > z[d, a] and z[c, a] > z[d, a]   # d is noise
    single, pair = grouping_scores(z)
    assert (single == 0).all() and np.isnan(np.diag(pair)).all()
    assert pair[a, b] == pytest.approx(-z[b, a]) and pair[c, a] == pytest.approx(-z[a, c])


def test_labelled_subset_drops_rows_of_other_tasks():
    data = toy()
    sub = labelled_subset(data, ["b", "d"])
    assert sub.task_names == ["b", "d"] and len(sub.splits["train"]) == 120
    assert torch.stack([sub.splits["train"].masks[t] for t in ("b", "d")]).any(0).all()


def test_tag_grouping_run_on_landmine_fixture(tmp_path, run_cli, results_dir):
    """Small-n version of the School grouping command: affinity -> groups -> trained groups."""
    import scipy.io

    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(60, 9)) for _ in range(5)]
    labels = [(f[:, :1] + 0.5 * rng.normal(size=(60, 1)) > 0.8).astype(np.uint8) for f in feats]
    cell = np.empty((1, 5), dtype=object)
    cell_l = np.empty((1, 5), dtype=object)
    for k in range(5):
        cell[0, k], cell_l[0, k] = feats[k], labels[k]
    scipy.io.savemat(tmp_path / "LandmineData.mat", {"feature": cell, "label": cell_l})
    assert run_cli("method=tag_grouping", "dataset=landmine", f"dataset.root={tmp_path}", "dataset.limit=null",
                   "trainer.epochs=2", "trainer.max_steps_per_epoch=4", "procedure.every=2",
                   "procedure.max_size=3", "procedure.budget=3", "backbone.width=8") == 0
    (_, rec), = list(iter_runs(results_dir))
    info = rec["procedure_info"]
    assert rec["method"] == "tag_grouping" and len(info["affinity"]) == 5
    assert set(info["assignment"]) == set(rec["tasks"]) and len(info["groups"]) <= 3
    assert set(rec["metrics"]["test"]) == set(rec["tasks"])
    assert rec["params"]["total"] > 0
