"""Taskonomy (Zamir et al. 2018): seg, depth, normal, keypoint, edge from one RGB image.

Layout (the Taskonomy release's file naming), read lazily from ``dataset.root`` (or
``<root>/taskonomy``), one PNG per sample and task::

    <root>/<building>/<folder>/point_<p>_view_<v>_domain_<folder>.png    (per building)
    <root>/<folder>/<building>/point_<p>_view_<v>_domain_<folder>.png    (per task, as
                                                Standley's loader walks it; auto-detected)

folders: ``rgb`` (RGB uint8), ``segment_semantic`` (uint8, 0 = unlabelled, 1..17 classes),
``normal`` (RGB uint8, 127-centred), ``depth_zbuffer`` (16-bit, 1/512 m, 65535 = no
depth), ``keypoints2d``, ``edge_texture``, ``edge_occlusion`` (16-bit). Only the folders
of the selected ``tasks`` are needed (plus ``depth_zbuffer`` for ``normal``, whose mask
comes from depth in both references). A sample is a (building, point, view) present in
every needed folder; incomplete views are skipped (``info["incomplete_skipped"]``).

Splits, by building (first found):
1. ``split_file`` or the one ``<root>/train_val_test_*.csv`` (the Taskonomy split CSVs:
   ``id,train,val,test`` with 0/1 flags, e.g. train_val_test_tiny.csv); listed buildings
   absent from the root are skipped.
2. Standley's whitelists ``<root>/train_models.txt`` + ``<root>/val_models.txt`` (+ optional
   ``test_models.txt``), one building per line. Without a test list the val_models
   buildings are the test split and val is carved from the train images (Standley instead
   evaluates on two image ranges of the same val buildings).
3. else a seeded split by building (``split_seed``): ``test_fraction`` of the buildings
   (at least one) for test, ``val_fraction`` for val (at least one; with only two
   buildings val is carved from the train building's images instead).
AdaShare's ``taskonomy.json`` sample lists (its own preprocessed "tiny-taskonomy-5-task"
folder) are not read: their exact content could not be checked.

``normalization``:
* ``adashare`` (sunxm2357/AdaShare ``dataloaders/taskonomy_dataloader.py``): seg -> 17
  classes (label k -> k-1, 0 -> ignore -1; AdaShare keeps 0 in class 0 with a zero weight
  mask that its loss never applies); depth -> log(1+d)/log(2^16), invalid (0) where
  d >= 64500 -> DepthTask; normals x/255*2-1, invalid where depth is; keypoints
  clip(k/2^16, 0, 0.005)/0.005*2-1 and edges clip(e/2^16, 0, 0.08)/0.08*2-1 -> L1Task.
  Its class-balancing ``semseg_prior_factor.npy`` (root) is not applied (SegmentationTask
  has no class weights); when present it is returned in ``info["seg_prior_factor"]``.
* ``standley`` (tstandley/taskgrouping ``taskonomy_loader.py`` / ``taskonomy_losses.py``):
  depth (d-1500)/1000 and edge_occlusion (e-56.0248)/239.1265, both masked where depth
  >= 2^13 (invalid = ``IGNORE``), keypoints2d (k-50)/100 and edge_texture (e-718)/1070
  unmasked -> L1Task (his losses are L1); seg 0 = ignore (his ``ignore_index=0``, 18
  outputs; here 17 classes, the same loss); normals x/255*2-1 masked by depth (his normal
  loss is a masked L1; here NormalTask's cosine loss).
``edge_folder`` (null = the normalization's own): ``edge_texture`` for AdaShare (inferred
from its 0.08 clipping scale; its json could not be checked), ``edge_occlusion`` for
Standley (his ``e`` task). Normals are renormalised to unit length (vectors shorter than
0.5 are invalid). Images are RGB in [0, 1] (AdaShare's BGR-mean input is not reproduced).
``resize`` (default [256, 256] in the config, both references' training size): bilinear for
image and continuous maps (masked: invalid pixels do not bleed), nearest for labels.
Augmentation (train only): random scale-crop + flip; depth/keypoint/edge values are not
rescaled (as AdaShare), normals' x is negated on flips.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mtlbench.core.data import DataError, DatasetSplit, MTLData
from mtlbench.datasets.nyuv2 import (DenseDataset, augmenter, bad, image_array, load_npy, locate,
                                     make_splits, not_found, read_png)
from mtlbench.tasks.dense import DenseConventions, DepthTask, L1Task, NormalTask, SegmentationTask
from mtlbench.core.registry import DATASETS

TASKS = ("seg", "depth", "normal", "keypoint", "edge")
FOLDERS = {"seg": "segment_semantic", "depth": "depth_zbuffer", "normal": "normal", "keypoint": "keypoints2d"}
EDGE_FOLDERS = ("edge_texture", "edge_occlusion")
NUM_CLASSES = 17
IGNORE = -1.0e4  # invalid pixels of Standley's masked L1 targets (L1Task ignore_value)
LAYOUT = ("<root>/<building>/{rgb,segment_semantic,normal,depth_zbuffer,keypoints2d,edge_texture,"
          "edge_occlusion}/point_<p>_view_<v>_domain_<folder>.png (or <root>/<folder>/<building>/...)")


def _layout(p: Path) -> Optional[str]:
    if (p / "rgb").is_dir():
        return "per_task"
    if p.is_dir() and any((d / "rgb").is_dir() for d in p.iterdir() if d.is_dir()):
        return "per_building"
    return None


def _folder(base: Path, layout: str, building: str, folder: str) -> Path:
    return base / folder / building if layout == "per_task" else base / building / folder


def _listing(d: Path) -> Dict[str, str]:
    """{"point_<p>_view_<v>": domain suffix} of the PNGs in ``d``."""
    out = {}
    for name in (os.listdir(d) if d.is_dir() else ()):
        stem, sep, dom = name[:-4].partition("_domain_") if name.endswith(".png") else ("", "", "")
        if sep:
            out[stem] = dom
    return out


def _read_list(path: Path) -> List[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _split_buildings(base: Path, buildings: List[str], split_file, seed: int, val_fraction: float,
                     test_fraction: float) -> Tuple[dict, str]:
    """{"train", "val" (None = carve from train images), "test"}: building lists, and how."""
    csvs = sorted(base.glob("train_val_test_*.csv"))
    if split_file is None and len(csvs) > 1:
        raise DataError(f"several split files in {base} ({', '.join(c.name for c in csvs)}): "
                        f"pick one with dataset.split_file=<name>")
    path = (base / split_file) if split_file else (csvs[0] if csvs else None)
    have = set(buildings)
    if path is not None:
        if not path.is_file():
            raise DataError(f"split file {path} not found; expected a Taskonomy CSV id,train,val,test")
        out: Dict[str, list] = {"train": [], "val": [], "test": []}
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) < 4 or not row[1].strip().isdigit():
                    continue  # header / blank lines
                for split, flag in zip(("train", "val", "test"), row[1:4]):
                    if flag.strip() == "1" and row[0].strip() in have:
                        out[split].append(row[0].strip())
        how = f"buildings from {path.name}"
    elif (base / "train_models.txt").is_file() and (base / "val_models.txt").is_file():
        tr, va = _read_list(base / "train_models.txt"), _read_list(base / "val_models.txt")
        te = _read_list(base / "test_models.txt") if (base / "test_models.txt").is_file() else None
        out = {"train": [b for b in tr if b in have], "val": [b for b in va if b in have] if te else None,
               "test": [b for b in (te or va) if b in have]}
        how = "Standley's train/val" + ("/test" if te else " (val buildings = test; val carved)") + " lists"
    else:
        if len(buildings) < 2:
            raise DataError(f"only {len(buildings)} building(s) in {base}: a split by building needs 2 "
                            f"or a split file (train_val_test_<subset>.csv)")
        g = torch.Generator().manual_seed(int(seed))
        order = [buildings[i] for i in torch.randperm(len(buildings), generator=g).tolist()]
        n_test = max(1, round(test_fraction * len(order)))
        rest = order[n_test:]
        n_val = max(1, round(val_fraction * len(order))) if len(rest) >= 2 else 0
        out = {"test": order[:n_test], "val": rest[:n_val] or None, "train": rest[n_val:]}
        how = f"seeded split by building (split_seed={seed}): no split file in {base}"
    for split in ("train", "test"):
        if not out[split]:
            raise DataError(f"taskonomy: no {split} building of the split ({how}) is present in {base}")
    return out, how


class TaskonomyDataset(DenseDataset):
    def __init__(self, base: Path, layout: str, samples: List[Tuple[str, str]], domains: dict,
                 tasks: Sequence[str], normalization: str, edge_folder: str, hw, **kw):
        std = normalization == "standley"
        kinds = {"seg": "label", "depth": "dense" if std else "depth_code", "normal": "normal",
                 "keypoint": "dense", "edge": "dense"}
        ignore = {"depth": IGNORE} if std else {}
        if std and edge_folder == "edge_occlusion":
            ignore["edge"] = IGNORE
        super().__init__({t: kinds[t] for t in tasks}, ignore_values=ignore, **kw)
        self.base, self.layout, self.samples, self.domains = base, layout, samples, domains
        self.tasks, self.std, self.edge_folder, self.hw = list(tasks), std, edge_folder, hw
        self.folders = {**FOLDERS, "edge": edge_folder}
        self.need_depth = bool({"depth", "normal"} & set(tasks)) or (
            std and "edge" in tasks and edge_folder == "edge_occlusion")

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, k: int) -> str:
        return "/".join(self.samples[k])

    def _path(self, building: str, folder: str, stem: str) -> Path:
        dom = self.domains[(building, folder)]
        return _folder(self.base, self.layout, building, folder) / f"{stem}_domain_{dom}.png"

    def _png16(self, b, folder, stem, hw) -> Tuple[Path, np.ndarray]:
        p = self._path(b, folder, stem)
        a = read_png(p, LAYOUT)
        if a.ndim != 2 or a.dtype != np.uint16 or a.shape != hw:
            raise bad(p, a, f"a {hw[0]}x{hw[1]} 16-bit single-channel PNG")
        return p, a.astype(np.float32)

    def read(self, k: int):
        b, stem = self.samples[k]
        p = self._path(b, "rgb", stem)
        rgb = read_png(p, LAYOUT)
        x = image_array(p, rgb, None if self.resize else self.hw)
        hw = tuple(x.shape[-2:])
        depth, valid = None, None
        if self.need_depth:
            _, depth = self._png16(b, "depth_zbuffer", stem, hw)
            valid = depth < (2 ** 13 if self.std else 64500)
        t: Dict[str, torch.Tensor] = {}
        for task in self.tasks:
            folder = self.folders[task]
            if task == "seg":
                p = self._path(b, folder, stem)
                s = read_png(p, LAYOUT)
                if s.ndim != 2 or s.dtype != np.uint8 or s.shape != hw:
                    raise bad(p, s, f"a {hw[0]}x{hw[1]} uint8 class map (0 = unlabelled, 1..17)")
                y = s.astype(np.int64) - 1
                y[(s == 0) | (y >= NUM_CLASSES)] = -1
                t[task] = torch.from_numpy(y)
                continue
            if task == "normal":
                p = self._path(b, folder, stem)
                n = read_png(p, LAYOUT)
                if n.ndim != 3 or n.shape[2] not in (3, 4) or n.dtype != np.uint8 or n.shape[:2] != hw:
                    raise bad(p, n, f"a {hw[0]}x{hw[1]}x3 uint8 normal image")
                v = n[..., :3].astype(np.float32) / 255.0 * 2.0 - 1.0
                norm = np.linalg.norm(v, axis=2, keepdims=True)
                ok = valid[..., None] & (norm > 0.5)
                t[task] = torch.from_numpy(np.where(ok, v / np.maximum(norm, 1e-6), 0.0)
                                           .astype(np.float32)).permute(2, 0, 1).contiguous()
                continue
            raw = depth if task == "depth" else self._png16(b, folder, stem, hw)[1]
            t[task] = torch.from_numpy(self._value(task, raw, valid)[None].astype(np.float32))
        return x, t

    def _value(self, task: str, raw: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
        if task == "depth":
            if self.std:
                return np.where(valid, (raw - 1500.0) / 1000.0, IGNORE)
            return np.where(valid, np.log1p(raw) / np.log(2.0 ** 16), 0.0)
        if not self.std:  # AdaShare: /2^16, clip to (0, scale), rescale to [-1, 1]
            scale = 0.005 if task == "keypoint" else 0.08
            return np.clip(raw / 2.0 ** 16, 0.0, scale) / scale * 2.0 - 1.0
        if task == "keypoint":
            return (raw - 50.0) / 100.0
        if self.edge_folder == "edge_occlusion":
            return np.where(valid, (raw - 56.0248) / 239.1265, IGNORE)
        return (raw - 718.0) / 1070.0


def _index(base: Path, layout: str, buildings: Sequence[str], folders: Sequence[str]):
    samples, domains, skipped = [], {}, 0
    for b in buildings:
        lists = {f: _listing(_folder(base, layout, b, f)) for f in folders}
        for f, lst in lists.items():
            if not lst:
                raise DataError(f"no point_<p>_view_<v>_domain_*.png in {_folder(base, layout, b, f)}; "
                                f"expected layout: {LAYOUT}")
            domains[(b, f)] = next(iter(lst.values()))
        stems = set(lists["rgb"])
        full = stems.intersection(*(set(lst) for lst in lists.values()))
        skipped += len(stems) - len(full)
        samples += [(b, s) for s in sorted(full)]
    return samples, domains, skipped


@DATASETS.register("taskonomy")
def taskonomy(root=None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
              normalization: str = "adashare", edge_folder: Optional[str] = None, split_file=None,
              val_fraction: float = 0.15, test_fraction: float = 0.15, resize=None, augment: bool = True,
              scales: Sequence[float] = (1.0, 1.2, 1.5), num_workers: int = 0,
              upsample_align_corners: bool = True, metric_aggregation: str = "pixel",
              miou_classes: str = "union") -> MTLData:
    conv = DenseConventions(upsample_align_corners, metric_aggregation, miou_classes)
    tasks = list(tasks or TASKS)
    if any(t not in TASKS for t in tasks):
        raise DataError(f"taskonomy: unknown task(s) {[t for t in tasks if t not in TASKS]}; tasks: {list(TASKS)}")
    if normalization not in ("adashare", "standley"):
        raise DataError(f"taskonomy: dataset.normalization must be adashare or standley (got {normalization!r})")
    edge_folder = edge_folder or ("edge_occlusion" if normalization == "standley" else "edge_texture")
    if edge_folder not in EDGE_FOLDERS:
        raise DataError(f"taskonomy: edge_folder must be one of {EDGE_FOLDERS} (got {edge_folder!r})")
    base = locate(root, "taskonomy", lambda p: _layout(p) is not None)
    if base is None:
        raise not_found("Taskonomy", root, "taskonomy", LAYOUT)
    layout = _layout(base)
    buildings = sorted(d.name for d in (base / "rgb" if layout == "per_task" else base).iterdir()
                       if d.is_dir() and (layout == "per_task" or (d / "rgb").is_dir()))
    folders = ["rgb"] + [{**FOLDERS, "edge": edge_folder}[t] for t in tasks]
    if "normal" in tasks or (normalization == "standley" and "edge" in tasks and edge_folder == "edge_occlusion"):
        folders.append("depth_zbuffer")
    folders = list(dict.fromkeys(folders))
    groups, how = _split_buildings(base, buildings, split_file, split_seed, val_fraction, test_fraction)
    index = {s: _index(base, layout, bs, folders) for s, bs in groups.items() if bs}
    empty = [s for s, v in index.items() if not v[0]]
    if empty:
        raise DataError(f"taskonomy: no complete sample (all of {folders}) in the {empty[0]} buildings "
                        f"{groups[empty[0]]} under {base}; expected layout: {LAYOUT}")
    b0, s0 = index["train"][0][0]
    first = _folder(base, layout, b0, "rgb") / f"{s0}_domain_{index['train'][1][(b0, 'rgb')]}.png"
    hw = tuple(read_png(first, LAYOUT).shape[:2])

    def make(split, aug=None):
        samples, domains, _ = index[split]
        return TaskonomyDataset(base, layout, samples, domains, tasks, normalization, edge_folder, hw,
                                resize=resize, augment=aug)

    plain = make("train")
    aug = augmenter(plain.kinds, augment, scales, plain.ignore_values)
    dl = lambda ds: DatasetSplit(ds, num_workers=int(num_workers))  # noqa: E731
    val = dl(make("val")) if "val" in index else None
    splits = make_splits(make("train", aug), plain, dl(make("test")), val_fraction, split_seed,
                         val=val, num_workers=num_workers)
    std = normalization == "standley"
    by_name = {"seg": SegmentationTask("seg", NUM_CLASSES, ignore_index=-1, conventions=conv),
               "depth": (L1Task("depth", 1, ignore_value=IGNORE, conventions=conv) if std
                         else DepthTask("depth", conventions=conv)),
               "normal": NormalTask("normal", conventions=conv), "keypoint": L1Task("keypoint", 1, conventions=conv),
               "edge": L1Task("edge", 1, ignore_value=IGNORE if std and edge_folder == "edge_occlusion" else None,
                              conventions=conv)}
    info = {"root": str(base), "layout": layout, "split": how, "normalization": normalization,
            "edge_folder": edge_folder, "buildings": {k: v for k, v in groups.items() if v},
            "incomplete_skipped": sum(v[2] for v in index.values()), "augment": repr(aug)}
    prior = base / "semseg_prior_factor.npy"
    if prior.is_file():
        info["seg_prior_factor"] = np.asarray(load_npy(prior, "a 1-D array of 17 class weights"),
                                              dtype=float).tolist()
    shape = (3, *(tuple(int(v) for v in resize) if resize else hw))
    return MTLData("taskonomy", [by_name[t] for t in tasks], shape, splits, info=info)
