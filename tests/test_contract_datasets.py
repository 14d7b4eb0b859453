"""Contract tests every registered dataset must pass (parametrized over ``DATASETS``): the
three splits exist and are disjoint, label masks are consistent, every task declares
``higher_is_better`` for each of its metrics, batches match the declared input shape.

Embedded datasets are built small; the ones read from files are built from fixtures
written in their published formats (``tests/test_loaders.py``) or from the real files in
``../shared/data`` (School, Landmine, Census-Income: skipped when that folder is absent).
A newly registered dataset must be given a source below, or the test fails naming it."""
import hashlib
from pathlib import Path

import pytest
import torch

from mtlbench.core.registry import DATASETS, load_all
from mtlbench.engine.context import build_data
from test_loaders import write_mtan, write_taskonomy

load_all()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _fixture(name):
    def make(tmp):
        if name == "nyuv2":
            return {"root": str(write_mtan(tmp / "nyu"))}
        if name == "cityscapes":
            return {"root": str(write_mtan(tmp / "city", labels=(("label_7", 7),), normal=False, H=8, W=16))}
        return {"root": str(write_taskonomy(tmp / "tk", views=3)), "resize": [16, 16]}
    return make


def _shared(folder):
    def make(tmp):
        if not (SHARED / folder).is_dir():
            pytest.skip(f"../shared/data/{folder} absent")
        return {"root": str(SHARED)}
    return make


SOURCES = {
    "multimnist": lambda tmp: {"n_train": 300, "n_val": 100, "n_test": 100},
    "scenes": lambda tmp: {"n_train": 24, "n_val": 8, "n_test": 8, "size": [32, 32]},
    "yeast": lambda tmp: {},
    "mmoe_synthetic": lambda tmp: {"n_train": 200, "n_val": 50, "n_test": 50},
    "nyuv2": _fixture("nyuv2"), "cityscapes": _fixture("cityscapes"), "taskonomy": _fixture("taskonomy"),
    "school": _shared("school"), "landmine": _shared("landmine"), "census_income": _shared("census_income"),
    "qm9": lambda tmp: {"limit": 8},  # 8 molecules per split from the qm9pack wheel (the qm9 extra)
}


@pytest.fixture(params=DATASETS.names(), scope="module")
def data(request, tmp_path_factory):
    name = request.param
    assert name in SOURCES, f"dataset '{name}' has no source in tests/test_contract_datasets.py: add one"
    return build_data({"name": name, "split_seed": 0, **SOURCES[name](tmp_path_factory.mktemp(name))})


def _keys(split):
    ids = split.sample_ids() if hasattr(split, "sample_ids") else None
    if ids is not None:
        return ids
    return [hashlib.sha1(b.x[i].numpy().tobytes()).hexdigest()
            for b in split.batches(256) for i in range(len(b))]


def test_splits_exist_and_are_disjoint(data):
    assert set(data.splits) == {"train", "val", "test"}
    keys = {k: _keys(s) for k, s in data.splits.items()}
    for k, v in keys.items():
        assert len(v) == len(data.splits[k]) > 0
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(keys[a]) & set(keys[b])
        assert not shared, f"{data.name}: {len(shared)} samples in both {a} and {b}"


def test_batches_match_tasks_shapes_and_masks(data):
    names = data.task_names
    assert names and len(set(names)) == len(names)
    for split_name, split in data.splits.items():
        b = next(iter(split.batches(4)))
        shape = b.x.shape[1:] if torch.is_tensor(b.x) else b.x.input_shape  # graphs: (node, edge) features
        assert tuple(shape) == tuple(data.input_shape)
        assert list(b.targets) == names and all(len(y) == len(b) for y in b.targets.values())
        if b.masks is not None:
            assert list(b.masks) == names
            assert all(m.dtype == torch.bool and m.shape == (len(b),) for m in b.masks.values())
    masks = getattr(data.splits["train"], "masks", None)
    if masks is not None:  # every task has labelled training samples
        assert all(bool(masks[t].any()) for t in names)


def test_every_metric_declares_higher_is_better(data):
    for t in data.tasks:
        ms = t.metrics()
        assert ms and len({m.name for m in ms}) == len(ms), t
        assert t.higher_is_better == {m.name: m.higher_is_better for m in ms}
        assert all(isinstance(v, bool) for v in t.higher_is_better.values()), t
