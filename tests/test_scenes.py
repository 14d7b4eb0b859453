"""The embedded ``scenes`` dataset: determinism, cache, exact geometry, task selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtlbench.cli
from mtlbench.core.registry import DATASETS

S = pytest.importorskip("mtlbench.datasets.scenes")

SMALL = {"train": 16, "val": 4, "test": 4}


def small(seed=0, size=(32, 32), max_objects=3):
    return S.generate(seed, SMALL, size, max_objects)


@pytest.fixture(scope="module")
def arrays():
    return small()


def camera_rays(h, w):
    """Camera-frame rays through pixel centres from the pinhole model (z component 1):
    focal = (min(h, w) / 2) / tan(FOV / 2), principal point at the image centre."""
    f = 0.5 * min(h, w) / np.tan(np.radians(S.FOV_DEG) / 2)
    j, i = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([(j - w / 2) / f, (i - h / 2) / f, np.ones((h, w))], -1)  # [h, w, 3]


def room_truth(R, o, h, w):
    """Analytic hit of every pixel's ray with the empty room: (camera z-depth, camera normal)."""
    ray_cam = camera_rays(h, w)
    d = ray_cam @ R  # world direction = R^T ray_cam
    L, C = S.ROOM_HALF, S.CEILING
    planes = [(0, -L, [1, 0, 0]), (0, L, [-1, 0, 0]), (1, 0.0, [0, 1, 0]), (1, C, [0, -1, 0]),
              (2, -L, [0, 0, 1]), (2, L, [0, 0, -1])]  # (axis, offset, inward normal)
    ts = []
    for axis, off, _ in planes:
        with np.errstate(divide="ignore"):
            t = (off - o[axis]) / d[..., axis]
        ts.append(np.where(t > 0, t, np.inf))
    ts = np.stack(ts)
    best = ts.argmin(0)
    t = ts.min(0)
    hit = o + t[..., None] * d
    depth = (hit - o) @ R[2]  # camera z of the hit point
    normals = np.array([n for _, _, n in planes], float)[best] @ R.T
    return depth, normals


def test_deterministic_in_split_seed(arrays):
    again, other = small(0), small(1)
    assert set(again) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(again[k], arrays[k])
    assert not np.array_equal(other["train_rgb"], arrays["train_rgb"])
    assert not np.array_equal(other["train_depth"], arrays["train_depth"])
    # splits are separate draws: changing n_train leaves val/test unchanged
    bigger = S.generate(0, {**SMALL, "train": 20}, (32, 32), 3)
    np.testing.assert_array_equal(bigger["test_depth"], arrays["test_depth"])


def test_ranges_and_consistency(arrays):
    seg, depth = arrays["train_seg"], arrays["train_depth"][:, 0]
    normal, edge, kp = arrays["train_normal"], arrays["train_edge"][:, 0], arrays["train_keypoint"][:, 0]
    assert seg.min() >= 0 and seg.max() < len(S.CLASSES) and set(np.unique(seg)) > {0, 1}
    assert np.isfinite(depth).all() and (depth > 0).all()
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
    dots = np.einsum("nchw,hwc->nhw", normal, camera_rays(32, 32))
    assert (dots < 1e-6).all() and (dots < 0).mean() > 0.99  # facing the camera
    assert set(np.unique(edge)) <= {0, 1}
    change = seg[:, :, 1:] != seg[:, :, :-1]
    assert edge[:, :, 1:][change].all() and edge[:, :, :-1][change].all()
    change = seg[:, 1:] != seg[:, :-1]
    assert edge[:, 1:][change].all() and edge[:, :-1][change].all()
    assert 0 < edge.mean() < 0.5
    assert kp.min() >= 0 and kp.max() <= 1 and kp.max() > 0.5
    assert arrays["train_rgb"].dtype == np.uint8 and arrays["train_rgb"].shape == (16, 3, 32, 32)


def test_room_pixels_match_the_camera_model(arrays):
    """Every floor/wall pixel, with objects present, has the analytic room depth and normal."""
    for i in range(4):
        depth, normals = room_truth(arrays["train_R"][i], arrays["train_origin"][i], 32, 32)
        room = arrays["train_seg"][i] <= 1
        np.testing.assert_allclose(arrays["train_depth"][i, 0][room], depth[room], rtol=1e-5)
        np.testing.assert_allclose(arrays["train_normal"][i].transpose(1, 2, 0)[room], normals[room], atol=1e-5)
        # objects stand in the room: nearer than the room surface behind them
        assert (arrays["train_depth"][i, 0][~room] < depth[~room] + 1e-6).all()


def test_empty_room_is_exact_at_every_pixel():
    a = S.generate(3, SMALL, (24, 40), max_objects=0)
    assert set(np.unique(a["train_seg"])) <= {0, 1}
    for i in range(len(a["train_R"])):
        R, o = a["train_R"][i], a["train_origin"][i]
        depth, normals = room_truth(R, o, 24, 40)
        np.testing.assert_allclose(a["train_depth"][i, 0], depth, rtol=1e-5)
        np.testing.assert_allclose(a["train_normal"][i].transpose(1, 2, 0), normals, atol=1e-5)
        # the floor pixel at the bottom centre, from the camera model alone: t = -o_y / d_y
        d = R.T @ camera_rays(24, 40)[23, 20]
        if a["train_seg"][i, 23, 20] == 0:
            assert a["train_depth"][i, 0, 23, 20] == pytest.approx(-o[1] / d[1], rel=1e-5)
            np.testing.assert_allclose(a["train_normal"][i, :, 23, 20], R @ [0, 1, 0], atol=1e-6)
        # keypoints: a blob on every room corner that projects into the image (all visible)
        f = 0.5 * 24 / np.tan(np.radians(S.FOV_DEG) / 2)
        L = S.ROOM_HALF
        for corner in [(x, y, z) for x in (-L, L) for y in (0, S.CEILING) for z in (-L, L)]:
            c = R @ (np.array(corner) - o)
            u, v = f * c[0] / c[2] + 20, f * c[1] / c[2] + 12
            if c[2] > 0 and 0 <= u < 40 and 0 <= v < 24:
                assert a["train_keypoint"][i, 0, int(v), int(u)] > 0.7


def test_builder_cache_round_trip(tmp_path, monkeypatch):
    kw = dict(root=str(tmp_path), split_seed=5, n_train=16, n_val=4, n_test=4, size=[16, 32], max_objects=2)
    first = DATASETS.get("scenes")(**kw)
    # one memory layout whether rendered or loaded, so runs give the same numbers either way
    assert all(v.is_contiguous() for sp in first.splits.values() for v in [sp.x, *sp.targets.values()])
    files = list((tmp_path / "scenes").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and not files[0].name.startswith(".")

    def boom(*a, **k):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(S, "generate", boom)
    monkeypatch.setattr(S, "render", boom)
    second = DATASETS.get("scenes")(**kw)
    assert second.task_names == ["seg", "depth", "normal", "edge", "keypoint"]
    assert second.input_shape == (3, 16, 32) and second.sizes() == {"train": 16, "val": 4, "test": 4}
    for name in ("train", "val", "test"):
        a, b = first.splits[name], second.splits[name]
        assert torch.equal(a.x, b.x)
        for t in a.targets:
            assert torch.equal(a.targets[t], b.targets[t])
    tr = second.splits["train"]
    assert tr.x.dtype == torch.float32 and 0 <= float(tr.x.min()) and float(tr.x.max()) <= 1
    shapes = {k: (v.dtype, tuple(v.shape[1:])) for k, v in tr.targets.items()}
    assert shapes == {"seg": (torch.int64, (16, 32)), "depth": (torch.float32, (1, 16, 32)),
                      "normal": (torch.float32, (3, 16, 32)), "edge": (torch.float32, (1, 16, 32)),
                      "keypoint": (torch.float32, (1, 16, 32))}
    # the tasks accept the targets (loss of a random prediction is finite)
    for task in second.tasks:
        pred = torch.randn(2, {"seg": 5, "normal": 3}.get(task.name, 1), 4, 8)
        assert torch.isfinite(task.loss(pred, tr.targets[task.name][:2]))


def test_bad_options():
    with pytest.raises(ValueError, match="dataset.size"):
        DATASETS.get("scenes")(root=None, size=[4, 64], n_train=2, n_val=1, n_test=1)
    with pytest.raises(ValueError, match="n_train"):
        DATASETS.get("scenes")(root=None, n_train=0)


@pytest.mark.parametrize("extra, tasks, backbone", [
    (["dataset.tasks=[seg,depth,normal,edge,keypoint]", "backbone=small_cnn"],
     ["seg", "depth", "normal", "edge", "keypoint"], "small_cnn"),
    ([], ["seg", "depth", "normal"], "small_resnet"),   # the config's defaults
])
def test_run_selects_tasks(tmp_path, extra, tasks, backbone):
    code = mtlbench.cli.main(["run", "dataset=scenes", "profile=tiny", "trainer.progress=false",
                              f"results_dir={tmp_path}", "dataset.n_train=32", "dataset.n_val=8",
                              "dataset.n_test=8", "dataset.size=[32,32]", *extra])
    assert code == 0
    (run_json,) = tmp_path.glob("scenes/*/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "completed" and record["tasks"] == tasks
    assert record["backbone"] == backbone and set(record["metrics"]["test"]) == set(tasks)
