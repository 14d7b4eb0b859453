"""Dense-prediction loaders (NYUv2, Cityscapes, Taskonomy) and their augmentation.

Tiny fixtures are written in exactly each on-disk format into tmp_path (MTAN .npy files;
Taskonomy PNGs with 16-bit depth / keypoints / edges). The four real AdaShare NYUv2 scenes
in ../shared/data are read when present (skipped otherwise; never copied).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mtlbench.cli
from mtlbench.loaders.augment import Augmenter, hflip, resize_sample, scale_crop
from mtlbench.core.data import DataError
from mtlbench.core.registry import DATASETS
from mtlbench.engine.run import build_data

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
TASK_FOLDERS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture",
                "edge_occlusion")


# ----------------------------------------------------------------------------- fixtures
def _unit(rng, shape):
    n = rng.normal(size=shape).astype(np.float32)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def write_mtan(root: Path, labels=(("label", 13),), normal=True, n_train=6, n_val=3, H=16, W=24, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            def save(sub, a):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                np.save(root / split / sub / f"{i}.npy", a)
            save("image", rng.random((H, W, 3)).astype(np.float32))
            for sub, c in labels:
                save(sub, rng.integers(-1, c, (H, W)).astype(np.float32))
            d = rng.uniform(0.5, 10, (H, W, 1)).astype(np.float32)
            d[0, :3] = 0  # invalid depth
            save("depth", d)
            if normal:
                v = _unit(rng, (H, W, 3))
                v[1, :2] = 0  # invalid normals
                save("normal", v)
    return root


def png(path: Path, a: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def write_taskonomy(root: Path, buildings=("allensville", "beechwood"), views=3, H=16, W=16, seed=0,
                    per_task=False, folders=TASK_FOLDERS):
    rng = np.random.default_rng(seed)
    for b in buildings:
        for k in range(views):
            for f in folders:
                if f in ("rgb", "normal"):
                    a = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                elif f == "segment_semantic":
                    a = rng.integers(0, 18, (H, W), dtype=np.uint8)
                else:  # 16-bit PNGs
                    a = rng.integers(0, 9000, (H, W)).astype(np.uint16)
                    if f == "depth_zbuffer":
                        a[0, :4], a[1, :2] = 65535, 8500  # invalid for both / for Standley only
                d = root / f / b if per_task else root / b / f
                png(d / f"point_{k // 2}_view_{k % 2}_domain_{f}.png", a)
    return root


def raw(root: Path, b: str, f: str, stem: str) -> np.ndarray:
    return np.array(Image.open(root / b / f / f"{stem}_domain_{f}.png"))


def cli(*args) -> int:
    return mtlbench.cli.main(["run", "profile=tiny", "trainer.progress=false", "trainer.batch_size=2",
                              "backbone=small_cnn", *args])


# ----------------------------------------------------------------------------- NYUv2 / Cityscapes
def test_nyuv2_mtan_registry_and_build_data(tmp_path):
    root = write_mtan(tmp_path / "nyu")
    data = DATASETS.get("nyuv2")(root=str(root), split_seed=0)
    assert data.task_names == ["seg", "depth", "normal"] and data.input_shape == (3, 16, 24)
    assert data.sizes() == {"train": 5, "val": 1, "test": 3} and data.info["format"] == "mtan"
    tr, va = data.splits["train"], data.splits["val"]
    assert tr.dataset.augment is not None and va.dataset.augment is None
    assert set(tr.indices.tolist()).isdisjoint(va.indices.tolist())
    b = next(iter(data.splits["test"].batches(3)))
    assert b.x.shape == (3, 3, 16, 24) and b.x.dtype == torch.float32 and 0 <= b.x.min() and b.x.max() <= 1
    seg, depth, normal = b.targets["seg"], b.targets["depth"], b.targets["normal"]
    assert seg.dtype == torch.int64 and seg.shape == (3, 16, 24) and seg.min() >= -1 and seg.max() <= 12
    assert (seg == -1).any() and depth.shape == (3, 1, 16, 24) and (depth[:, 0, 0, :3] == 0).all()
    n = normal.norm(dim=1)
    assert (n[:, 1, :2] == 0).all() and torch.allclose(n[:, 2:], torch.ones_like(n[:, 2:]), atol=1e-5)
    x0, t0 = data.splits["test"].dataset[1]
    assert torch.equal(x0, torch.from_numpy(np.load(root / "val/image/1.npy")).permute(2, 0, 1))
    # the same through build_data: generic keys limit / tasks, seeded val split
    d2 = build_data({"name": "nyuv2", "root": str(root), "split_seed": 0, "limit": 2, "tasks": ["depth", "seg"],
                     "val_fraction": 0.34})
    assert d2.task_names == ["depth", "seg"] and d2.sizes() == {"train": 2, "val": 2, "test": 2}
    d3 = build_data({"name": "nyuv2", "root": str(root), "split_seed": 0, "val_fraction": 0.34})
    assert d3.splits["val"].indices.tolist() == build_data(
        {"name": "nyuv2", "root": str(root), "split_seed": 0, "val_fraction": 0.34}).splits["val"].indices.tolist()
    assert set(next(iter(d2.splits["val"].batches(2))).targets) == {"depth", "seg"}


def test_nyuv2_resize_keeps_invalid_pixels_and_unit_normals(tmp_path):
    root = write_mtan(tmp_path / "nyu", H=16, W=24)
    data = DATASETS.get("nyuv2")(root=str(root), resize=[8, 12], augment=False)
    assert data.input_shape == (3, 8, 12)
    x, t = data.splits["test"].dataset[0]
    full = torch.from_numpy(np.load(root / "val/label/0.npy")).long()
    assert x.shape == (3, 8, 12) and t["seg"].shape == (8, 12) and t["depth"].shape == (1, 8, 12)
    assert set(t["seg"].unique().tolist()) <= set(full.unique().tolist())  # nearest: no new labels
    n = t["normal"].norm(dim=0)
    assert torch.all((n - 1).abs() < 1e-4)
    assert (t["depth"] >= 0).all() and (t["depth"][t["depth"] > 0] >= 0.5).all()  # no bleeding of 0s


def test_nyuv2_adashare_format_with_split_list(tmp_path):
    root, rng, H, W = tmp_path / "ada", np.random.default_rng(0), 12, 16
    ids = [f"{i:04d}" for i in range(5)]
    for i in ids:
        png(root / "img" / f"{i}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        seg = rng.integers(0, 40, (H, W), dtype=np.uint8)
        seg[0, 0] = 255
        png(root / "seg" / f"{i}.png", seg)
        nrm = ((_unit(rng, (H, W, 3)) + 1) / 2 * 255).round().astype(np.uint8)
        nrm[0, :3], nrm[1, :3] = 255, 127  # AdaShare's white and grey "no normal" fills
        png(root / "normal_mask" / f"{i}.png", nrm)
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{i}.npy", np.asfortranarray(rng.uniform(0.5, 5, (H, W)).astype(np.float32)))
    entry = lambda i: [f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"]  # noqa: E731
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": [entry(i) for i in ids[:3]],
                                                        "test": [entry(i) for i in ids[3:]]}))
    data = DATASETS.get("nyuv2")(root=str(root), format="adashare")
    assert data.info["format"] == "adashare" and "nyu_v2_3task.json" in data.info["split"]
    assert data.sizes() == {"train": 2, "val": 1, "test": 2} and data.tasks[0].num_classes == 40
    x, t = data.splits["test"].dataset[0]
    assert x.shape == (3, H, W) and t["seg"][0, 0] == -1 and t["seg"].max() <= 39
    n = t["normal"].norm(dim=0)
    assert (n[:2, :3] == 0).all() and torch.all((n[2:] - 1).abs() < 1e-4)
    assert torch.allclose(t["depth"][0], torch.from_numpy(np.load(root / "depth/0003.npy")))
    with pytest.raises(DataError, match="MTAN layout"):
        DATASETS.get("nyuv2")(root=str(root), format="mtan")


def test_cityscapes_label_7_and_19(tmp_path):
    root = write_mtan(tmp_path / "cs", labels=(("label_7", 7), ("label_19", 19)), normal=False, H=8, W=16)
    for c in (7, 19):
        data = DATASETS.get("cityscapes")(root=str(root), num_classes=c, augment=False)
        assert data.task_names == ["seg", "depth"] and data.tasks[0].num_classes == c
        b = next(iter(data.splits["test"].batches(3)))
        assert b.targets["seg"].max() <= c - 1 and b.targets["seg"].min() == -1
        assert b.targets["depth"].shape == (3, 1, 8, 16)
        ref = np.load(root / "val" / f"label_{c}" / "0.npy")
        assert torch.equal(b.targets["seg"][0], torch.from_numpy(ref).long())
    for f in (root / "train" / "label_19").glob("*.npy"):
        f.unlink()
    with pytest.raises(DataError, match="label_19"):
        DATASETS.get("cityscapes")(root=str(root), num_classes=19)


# ----------------------------------------------------------------------------- Taskonomy
def test_taskonomy_adashare_normalisation(tmp_path):
    root = write_taskonomy(tmp_path / "tk")
    data = DATASETS.get("taskonomy")(root=str(root), split_seed=0, augment=False)
    assert data.task_names == ["seg", "depth", "normal", "keypoint", "edge"] and data.input_shape == (3, 16, 16)
    assert data.tasks[0].num_classes == 17 and type(data.tasks[1]).__name__ == "DepthTask"
    test = data.splits["test"].dataset
    b, stem = test.samples[0]
    x, t = test[0]
    s, d = raw(root, b, "segment_semantic", stem), raw(root, b, "depth_zbuffer", stem).astype(np.float64)
    assert raw(root, b, "depth_zbuffer", stem).dtype == np.uint16  # real 16-bit PNGs
    exp_seg = np.where(s == 0, -1, s.astype(np.int64) - 1)
    assert torch.equal(t["seg"], torch.from_numpy(exp_seg))
    exp_depth = np.where(d < 64500, np.log1p(d) / math.log(2 ** 16), 0.0)
    assert np.allclose(t["depth"][0].numpy(), exp_depth, atol=1e-6) and (t["depth"][0, 0, :4] == 0).all()
    k = raw(root, b, "keypoints2d", stem) / 2 ** 16
    assert np.allclose(t["keypoint"][0].numpy(), np.clip(k, 0, 0.005) / 0.005 * 2 - 1, atol=1e-5)
    e = raw(root, b, "edge_texture", stem) / 2 ** 16
    assert np.allclose(t["edge"][0].numpy(), np.clip(e, 0, 0.08) / 0.08 * 2 - 1, atol=1e-5)
    v = raw(root, b, "normal", stem) / 255 * 2 - 1
    norm = np.linalg.norm(v, axis=2, keepdims=True)
    ok = (d < 64500)[..., None] & (norm > 0.5)
    assert np.allclose(t["normal"].permute(1, 2, 0).numpy(), np.where(ok, v / norm, 0), atol=1e-6)
    assert (t["normal"][:, 0, :4] == 0).all() and ok.mean() > 0.5
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1


def test_taskonomy_standley_normalisation_and_subset(tmp_path):
    root = write_taskonomy(tmp_path / "tk")
    data = DATASETS.get("taskonomy")(root=str(root), normalization="standley", augment=False)
    ds = data.splits["test"].dataset
    b, stem = ds.samples[1]
    _, t = ds[1]
    d = raw(root, b, "depth_zbuffer", stem).astype(np.float64)
    ig = data.tasks[1].ignore_value
    assert type(data.tasks[1]).__name__ == "L1Task" and data.info["edge_folder"] == "edge_occlusion"
    assert np.allclose(t["depth"][0].numpy(), np.where(d < 2 ** 13, (d - 1500) / 1000, ig), atol=1e-5)
    assert (t["depth"][0, 1, :2] == ig).all() and (t["edge"][0, 1, :2] == ig).all()
    eo = raw(root, b, "edge_occlusion", stem).astype(np.float64)
    assert np.allclose(t["edge"][0].numpy(), np.where(d < 2 ** 13, (eo - 56.0248) / 239.1265, ig), atol=1e-4)
    kp = raw(root, b, "keypoints2d", stem).astype(np.float64)
    assert np.allclose(t["keypoint"][0].numpy(), (kp - 50) / 100, atol=1e-5)
    assert (t["normal"][:, 1, :2] == 0).all()  # normals masked where depth >= 2^13
    # a subset needs only its folders; the per-task layout (Standley's walk) is detected
    sub = write_taskonomy(tmp_path / "sub", per_task=True, folders=("rgb", "depth_zbuffer"))
    d2 = DATASETS.get("taskonomy")(root=str(sub), tasks=["depth"], resize=[8, 8])
    assert d2.info["layout"] == "per_task" and d2.task_names == ["depth"] and d2.input_shape == (3, 8, 8)
    x, t2 = d2.splits["train"].dataset[0]
    assert x.shape == (3, 8, 8) and set(t2) == {"depth"} and t2["depth"].shape == (1, 8, 8)


def test_taskonomy_building_splits(tmp_path):
    root = write_taskonomy(tmp_path / "tk", buildings=("a", "b", "c", "d"), views=2)
    seeded = DATASETS.get("taskonomy")(root=str(root), tasks=["seg"], split_seed=3)
    g = seeded.info["buildings"]
    assert sorted(sum(g.values(), [])) == ["a", "b", "c", "d"] and len(g["test"]) == 1 and len(g["val"]) == 1
    (root / "train_val_test_tiny.csv").write_text("id,train,val,test\na,1,0,0\nb,1,0,0\nc,0,1,0\nd,0,0,1\nzz,1,0,0\n")
    data = DATASETS.get("taskonomy")(root=str(root), tasks=["seg"])
    assert data.info["buildings"] == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert data.sizes() == {"train": 4, "val": 2, "test": 2}
    (root / "train_val_test_tiny.csv").unlink()
    (root / "train_models.txt").write_text("a\nb\nc\n")
    (root / "val_models.txt").write_text("d\n")
    data = DATASETS.get("taskonomy")(root=str(root), tasks=["seg"], val_fraction=0.2)
    assert data.info["buildings"] == {"train": ["a", "b", "c"], "test": ["d"]} and data.sizes()["val"] == 1


# ----------------------------------------------------------------------------- CLI runs and errors
@pytest.mark.parametrize("name", ["nyuv2", "cityscapes", "taskonomy"])
def test_cli_hard_sharing_run(tmp_path, name):
    if name == "nyuv2":
        root = write_mtan(tmp_path / "data")
    elif name == "cityscapes":
        root = write_mtan(tmp_path / "data", labels=(("label_7", 7),), normal=False, H=8, W=16)
    else:
        root = write_taskonomy(tmp_path / "data", views=3)
    extra = ["dataset.resize=[16,16]"] if name == "taskonomy" else []
    assert cli(f"dataset={name}", f"dataset.root={root}", f"results_dir={tmp_path / 'res'}", *extra) == 0
    (run_json,) = (tmp_path / "res" / name).rglob("run.json")
    rec = json.loads(run_json.read_text())
    assert rec["status"] == "completed" and rec["dataset"] == name and set(rec["metrics"]["test"]) == set(rec["tasks"])


@pytest.mark.parametrize("name,layout", [("nyuv2", "{train,val}/{image,label,depth,normal}"),
                                         ("cityscapes", "label_7"), ("taskonomy", "_domain_")])
def test_missing_root_is_one_line(tmp_path, capsys, name, layout):
    for where in ([f"dataset.root={tmp_path / 'nope'}"], ["dataset.root=null", f"data_root={tmp_path}"]):
        rc = cli(f"dataset={name}", f"results_dir={tmp_path / 'res'}", *where)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "not found" in err[0] and layout in err[0], err


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes", "taskonomy"])
def test_configs_compose_and_match_the_builders(name):
    import inspect

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("mtlbench.conf", version_base=None):
        cfg = OmegaConf.to_container(compose("config", overrides=[f"dataset={name}"]), resolve=True)
    assert cfg["backbone"]["name"] == "resnet18" and cfg["dataset"]["name"] == name
    assert cfg["dataset"]["augment"] is True and cfg["dataset"]["root"] is None
    params = inspect.signature(DATASETS.get(name)).parameters
    generic = {"name", "root", "split_seed", "limit", "tasks"}
    assert set(cfg["dataset"]) - generic <= set(params), set(cfg["dataset"]) - generic - set(params)


def test_malformed_files_name_the_file(tmp_path, capsys):
    root = write_mtan(tmp_path / "nyu")
    np.save(root / "val/normal/2.npy", np.zeros((16, 23, 3), np.float32))  # wrong shape
    rc = cli("dataset=nyuv2", f"dataset.root={root}", f"results_dir={tmp_path / 'res'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(root / "val/normal/2.npy") in err[0] and "16x24x3" in err[0], err
    data = DATASETS.get("nyuv2")(root=str(root))
    good = (root / "val/depth/1.npy").read_bytes()
    (root / "val/depth/1.npy").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"val/depth/1\.npy.*truncated"):
        data.splits["test"].dataset[1]
    (root / "val/image/0.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"val/image/0\.npy"):
        data.splits["test"].dataset[0]
    tk = write_taskonomy(tmp_path / "tk")
    data = DATASETS.get("taskonomy")(root=str(tk), tasks=["depth"])
    b, stem = data.splits["test"].dataset.samples[0]
    bad = tk / b / "depth_zbuffer" / f"{stem}_domain_depth_zbuffer.png"
    png(bad, np.zeros((16, 16), np.uint8))  # 8-bit where a 16-bit PNG is expected
    with pytest.raises(DataError, match="16-bit") as exc:
        data.splits["test"].dataset[0]
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated or not a PNG"):
        data.splits["test"].dataset[0]


# ----------------------------------------------------------------------------- augmentation
KINDS = {"seg": "label", "depth": "depth", "normal": "normal", "disp": "disparity"}


def _sample(H=8, W=8):
    x = torch.arange(H * W, dtype=torch.float32).view(1, H, W).repeat(3, 1, 1)
    seg = torch.arange(W).repeat(H, 1)  # label = column index
    depth = (1.0 + torch.arange(H * W, dtype=torch.float32)).view(1, H, W)
    normal = torch.zeros(3, H, W)
    normal[0], normal[2] = 0.6, 0.8
    normal[:, 0, 0] = 0  # invalid
    return x, {"seg": seg, "depth": depth, "normal": normal, "disp": depth.clone()}


def test_flip_negates_normal_x_and_keeps_seg_aligned():
    x, t = _sample()
    fx, ft = hflip(x, t, KINDS)
    assert torch.equal(ft["seg"][0], torch.arange(8).flip(0)) and torch.equal(fx, x.flip(-1))
    assert torch.equal(ft["seg"], t["seg"].flip(-1)) and torch.equal(ft["depth"], t["depth"].flip(-1))
    assert torch.allclose(ft["normal"][0, :, :-1], torch.full((8, 7), -0.6))
    assert torch.equal(ft["normal"][1:], t["normal"][1:].flip(-1)) and (ft["normal"][:, 0, -1] == 0).all()


def test_scale_crop_divides_depth_by_scale():
    x, t = _sample()
    cx, ct = scale_crop(x, t, KINDS, 2.0, 2, 4)  # 4x4 window at (2, 4), back to 8x8
    up = lambda a: a.repeat_interleave(2, -2).repeat_interleave(2, -1)  # noqa: E731 (nearest x2)
    assert torch.equal(ct["seg"], up(t["seg"][2:6, 4:8]))
    assert torch.allclose(ct["depth"], up(t["depth"][:, 2:6, 4:8]) / 2.0)
    assert torch.allclose(ct["disp"], up(t["disp"][:, 2:6, 4:8]) * 2.0)  # disparity: inverse depth
    assert torch.allclose(ct["normal"][:, 2:, 2:], torch.tensor([0.6, 0, 0.8]).view(3, 1, 1).expand(3, 6, 6))
    assert cx.shape == x.shape and cx[0, 0, 0] == x[0, 2, 4] and cx[0, -1, -1] == x[0, 5, 7]


def test_augmenter_is_seeded_by_torch_and_resize_renormalises():
    x, t = _sample(16, 16)
    aug = Augmenter(KINDS)
    torch.manual_seed(0)
    a = [aug(x, t) for _ in range(4)]
    torch.manual_seed(0)
    b = [aug(x, t) for _ in range(4)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1]["depth"], q[1]["depth"]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], x) for p in a)  # something happened in 4 draws
    rx, rt = resize_sample(x, t, KINDS, (8, 8))
    n = rt["normal"].norm(dim=0)
    assert rx.shape == (3, 8, 8) and torch.all((n[n > 0] - 1).abs() < 1e-5) and rt["seg"].dtype == torch.int64


# ----------------------------------------------------------------------------- real AdaShare samples
def test_real_adashare_nyuv2_samples():
    root = SHARED / "nyuv2_adashare_samples"
    if not (root / "img").is_dir():
        pytest.skip(f"real NYUv2 samples not present at {root}")
    with pytest.warns(UserWarning, match="seeded split"):
        data = DATASETS.get("nyuv2")(root=str(root), augment=False)
    assert data.info["format"] == "adashare" and data.input_shape == (3, 480, 640)
    assert sum(data.sizes().values()) == 4 and data.tasks[0].num_classes == 40
    seen = set()
    for split in ("train", "val", "test"):
        ds = data.splits[split]
        for i in ds.indices.tolist():
            x, t = ds.dataset[i]
            img, seg, nrm, dep = (root / p for p in ds.dataset.items[i])
            seen.add(img.stem)
            assert x.shape == (3, 480, 640) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.5
            s = np.array(Image.open(seg))
            assert t["seg"].dtype == torch.int64 and t["seg"].min() >= -1 and t["seg"].max() <= 39
            assert torch.equal(t["seg"] == -1, torch.from_numpy(s == 255)) and (t["seg"] == -1).any()
            n = t["normal"].norm(dim=0)
            valid = n > 0
            assert 0.5 < valid.float().mean() < 1 and torch.all((n[valid] - 1).abs() < 1e-4)
            assert not valid[torch.from_numpy((np.array(Image.open(nrm)) == 255).all(-1))].any()
            assert t["depth"].shape == (1, 480, 640) and (t["depth"] > 0).all()  # these scenes have no holes
            assert torch.allclose(t["depth"][0], torch.from_numpy(np.load(dep)))
    assert seen == {"0061", "0295", "0774", "1314"}
    with pytest.warns(UserWarning, match="seeded split"):
        small = build_data({"name": "nyuv2", "root": str(root), "resize": [60, 80], "augment": True})
    x, t = small.splits["train"].dataset[small.splits["train"].indices[0]]
    assert x.shape == (3, 60, 80) and t["seg"].shape == (60, 80) and t["seg"].min() >= -1
    n = t["normal"].norm(dim=0)
    assert torch.all((n[n > 0] - 1).abs() < 1e-4)
