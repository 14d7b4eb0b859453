import json
import os

import pandas as pd
import pytest

import mtlbench
from mtlbench.results.store import (RUN_COLUMNS, RunFolder, StoreError, atomic_write_json, config_hash,
                                    iter_runs, load_runs, read_run)


# ----------------------------------------------------------------- atomic writes
def test_atomic_write_json_roundtrip_leaves_no_temp_files(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"a": 1, "b": [1.5, "x"]})
    atomic_write_json(target, {"a": 2})  # overwrite
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_atomic_write_json_serialises_tensor_and_numpy_scalars(tmp_path):
    import numpy as np
    import torch

    target = tmp_path / "x.json"
    atomic_write_json(target, {"t": torch.tensor(1.5), "f": np.float32(0.25), "i": np.int64(3)})
    assert json.loads(target.read_text()) == {"t": 1.5, "f": 0.25, "i": 3}


def test_atomic_write_json_serialises_tensor_and_array_vectors(tmp_path):
    import numpy as np
    import torch

    target = tmp_path / "x.json"
    atomic_write_json(target, {"t": torch.tensor([1.5, 2.0]), "a": np.arange(3)})
    assert json.loads(target.read_text()) == {"t": [1.5, 2.0], "a": [0, 1, 2]}


def test_failed_replace_does_not_clobber_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"status": "completed"})
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(target, {"status": "half written"})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # temp file removed


def test_failed_serialisation_does_not_clobber_existing_file(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"ok": True})
    before = target.read_bytes()

    class Exploding:
        def item(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError, match="cannot serialise"):
        atomic_write_json(target, {"x": Exploding()})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_read_run_corrupt_file_is_a_store_error(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        read_run(tmp_path)
    assert read_run(tmp_path / "missing") is None


# ----------------------------------------------------------------- config_hash
BASE_CFG = {
    "seed": 0, "results_dir": "results", "reports_dir": "reports", "data_root": "~/.cache/mtlbench",
    "force": False,
    "trainer": {"epochs": 4, "batch_size": 128, "progress": "auto"},
    "dataset": {"name": "multimnist", "root": None, "limit": None},
    "arch": {"name": "hard_sharing"},
}


def _with(**changes):
    cfg = json.loads(json.dumps(BASE_CFG))
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_config_hash_is_short_hex_and_stable():
    h = config_hash(BASE_CFG)
    assert len(h) == 8 and all(ch in "0123456789abcdef" for ch in h)
    assert config_hash(json.loads(json.dumps(BASE_CFG))) == h
    # key order does not matter
    assert config_hash(dict(reversed(list(BASE_CFG.items())))) == h


@pytest.mark.parametrize("change", [
    {"results_dir": "/elsewhere"}, {"force": True}, {"data_root": "/data"},
    {"reports_dir": "/r"}, {"trainer__progress": False}, {"dataset__root": "/d"},
])
def test_config_hash_ignores_output_locations_and_switches(change):
    assert config_hash(_with(**change)) == config_hash(BASE_CFG)


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"trainer__epochs": 5}, {"trainer__batch_size": 64}, {"dataset__limit": 64},
    {"arch__name": "independent"},
])
def test_config_hash_changes_with_what_is_computed(change):
    assert config_hash(_with(**change)) != config_hash(BASE_CFG)


def test_config_hash_does_not_mutate_its_input():
    cfg = _with()
    config_hash(cfg)
    assert cfg == BASE_CFG


# ----------------------------------------------------------------- locking
def test_acquire_twice_in_the_same_process_raises(tmp_path):
    folder = RunFolder(tmp_path, "ds", "m", "s0-abcdef12")
    folder.acquire()
    assert folder.path.is_dir() and (folder.path / ".lock").exists()
    other = RunFolder(tmp_path, "ds", "m", "s0-abcdef12")
    with pytest.raises(StoreError, match="another process") as info:
        other.acquire()
    assert "force=true" not in str(info.value)  # the old hint that did not work
    folder.release()
    assert not (folder.path / ".lock").exists()
    other.acquire()  # free again after release
    other.release()


@pytest.mark.parametrize("content", ["999999999", "", "garbage", "0"])
def test_lock_file_of_a_dead_process_is_not_held(tmp_path, content):
    """An OS file lock dies with its process: a leftover .lock file (any content, including
    the PID files of older versions) is simply locked again."""
    folder = RunFolder(tmp_path, "ds", "m", "s0-abcdef12")
    folder.path.mkdir(parents=True)
    (folder.path / ".lock").write_text(content)
    folder.acquire()
    folder.release()
    assert not (folder.path / ".lock").exists()


def test_acquire_in_unwritable_place_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError, match="results_dir"):
        RunFolder(blocker, "ds", "m", "s0-x").acquire()


def test_is_completed(tmp_path):
    folder = RunFolder(tmp_path, "ds", "m", "s0-x")
    assert not folder.is_completed()
    folder.path.mkdir(parents=True)
    atomic_write_json(folder.run_json, {"status": "failed"})
    assert not folder.is_completed()
    atomic_write_json(folder.run_json, _record("s0-x", "m", 0))
    assert folder.is_completed()
    folder.run_json.write_text("{broken")
    assert not folder.is_completed()


@pytest.mark.parametrize("content, why", [
    ('["a", "list"]', "not a JSON object"),
    ('{"status": "completed"}', "without run_id, method, dataset, seed, metrics"),
    ('"just a string"', "not a JSON object"),
])
def test_malformed_run_json_is_not_completed_and_names_the_file(tmp_path, content, why):
    """Issue 21 item 8: valid JSON that is no run record never crashes a reader; the run
    counts as not completed (rerunning it runs it again), the error names the file."""
    folder = RunFolder(tmp_path, "ds", "m", "s0-x")
    folder.path.mkdir(parents=True)
    folder.run_json.write_text(content)
    assert not folder.is_completed()
    with pytest.raises(StoreError) as info:
        read_run(folder.path)
    assert str(folder.run_json) in str(info.value) and why in str(info.value)


def test_metrics_that_are_not_a_table_are_malformed(tmp_path):
    rec = _record("s0-x", "m", 0)
    for bad in ("oops", {"test": "oops"}, {"test": {"t1": {"acc": "high"}}}, {"test": {"t1": [0.5]}}):
        problems = []
        _rewrite(tmp_path, {**rec, "metrics": bad})
        assert list(iter_runs(tmp_path, problems)) == [] and problems[0][1] == "malformed metrics"
    _rewrite(tmp_path, {**rec, "params": "many", "seed": "0"})
    problems = []
    assert list(iter_runs(tmp_path, problems)) == [] and problems[0][1] == "malformed seed, params"


def _rewrite(results, rec):
    folder = RunFolder(results, rec["dataset"], rec["method"], rec["run_id"])
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder.run_json, rec)


# ----------------------------------------------------------------- load_runs
def _record(run_id, method, seed, status="completed", metrics=True):
    rec = {"status": status, "run_id": run_id, "method": method, "dataset": "toy", "seed": seed,
           "arch": "a", "balancer": "b", "procedure": "single", "backbone": "mlp",
           "params": {"total": 100 + seed}, "flops": {"total": 1000}, "wall_time_s": 1.5}
    if metrics:
        rec["metrics"] = {"test": {"t1": {"acc": 0.5 + seed / 10, "err": 0.1}, "t2": {"acc": 0.25}},
                          "val": {"t1": {"acc": 0.4, "err": 0.2}, "t2": {"acc": 0.3}}}
        rec["higher_is_better"] = {"t1": {"acc": True, "err": False}, "t2": {"acc": True}}
    return rec


def _write(results, rec):
    folder = RunFolder(results, rec["dataset"], rec["method"], rec["run_id"])
    folder.path.mkdir(parents=True)
    atomic_write_json(folder.run_json, rec)


def test_load_runs_tidy_frame(tmp_path):
    _write(tmp_path, _record("s0-aaaaaaaa", "m1", 0))
    _write(tmp_path, _record("s1-bbbbbbbb", "m1", 1))
    _write(tmp_path, _record("s0-cccccccc", "m2", 0, status="failed", metrics=False))

    df = load_runs(tmp_path)
    assert list(df.columns) == RUN_COLUMNS + ["split", "task", "metric", "value", "higher_is_better"]
    # two completed runs x (2 splits x 3 task/metric pairs) + one row for the failed run
    assert len(df) == 2 * 6 + 1
    row = df[(df.run_id == "s1-bbbbbbbb") & (df.split == "test") & (df.task == "t1") & (df.metric == "acc")]
    assert len(row) == 1
    r = row.iloc[0]
    assert r.value == pytest.approx(0.6) and bool(r.higher_is_better) is True
    assert r.params_total == 101 and r.flops_total == 1000 and r.method == "m1" and r.seed == 1
    assert r.path.endswith("s1-bbbbbbbb")
    err = df[(df.metric == "err")]
    assert not err["higher_is_better"].astype(bool).any()

    failed = df[df.run_id == "s0-cccccccc"]
    assert len(failed) == 1 and failed.iloc[0].status == "failed" and pd.isna(failed.iloc[0].split)

    completed = load_runs(tmp_path, status="completed")
    assert set(completed.run_id) == {"s0-aaaaaaaa", "s1-bbbbbbbb"}
    # the package-level shortcut is the same thing
    pd.testing.assert_frame_equal(mtlbench.load_runs(tmp_path, status="completed"), completed)


def test_load_runs_empty_or_missing_store(tmp_path):
    for where in (tmp_path, tmp_path / "missing"):
        df = load_runs(where)
        assert df.empty
        assert list(df.columns) == RUN_COLUMNS + ["split", "task", "metric", "value", "higher_is_better"]
