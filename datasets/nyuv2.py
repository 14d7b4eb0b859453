"""NYUv2 (Silberman et al. 2012): 13- or 40-class segmentation, depth and surface normals.

Two on-disk formats, read lazily from ``dataset.root`` (or ``<root>/nyuv2``), one file
per sample; ``format=auto`` picks the one it finds (MTAN first):

MTAN / LibMTL (lorenmt/mtan, ``im2im_pred/create_dataset.py``), 288x384::

    <root>/{train,val}/image/<i>.npy    HxWx3 float RGB in [0, 1]
    <root>/{train,val}/label/<i>.npy    HxW, 13 classes 0..12, -1 = ignore
    <root>/{train,val}/depth/<i>.npy    HxWx1 metres, 0 = invalid
    <root>/{train,val}/normal/<i>.npy   HxWx3 unit vectors, all-zero = invalid

  795 train / 654 test images; MTAN's ``val/`` folder IS the test split (as MTAN and LibMTL
  report it); our val split is carved from train (``val_fraction``, seeded by ``split_seed``)
  and read without augmentation.

AdaShare (sunxm2357/AdaShare, ``dataloaders/nyu_v2_dataloader.py``), 480x640, 40 classes::

    <root>/img/<id>.png          RGB uint8                 -> float RGB / 255
    <root>/seg/<id>.png          uint8 classes 0..39, 255 = ignore -> int64, 255 -> -1
    <root>/depth/<id>.npy        float32 HxW metres (Fortran order), 0 = invalid
    <root>/normal_mask/<id>.png  RGB uint8 normals: x/255*2-1 -> [-1, 1], renormalised
    <root>/nyu_v2_3task.json     optional split list {"train": [...], "test": [...], "val"?:
                                 [...]}, entries [img, seg, normal, depth] relative to root

  Normal pixels are invalid (set all-zero) where any channel is 255 (AdaShare's own test,
  ``gt.max(dim=1) < 255``: the white "no normal" fill) or where the decoded vector is
  shorter than 0.5 (the grey 127/127/127 fill). AdaShare's loss normalises the raw 0..255
  values without centring them; here they are centred (x/255*2-1) so they are true unit
  normals with +x = image right (R channel; checked on the four sample scenes). Without the
  json (or when it lacks "train"/"test") the split is seeded by ``split_seed``:
  ``test_fraction`` (default 654/1449) of the images for test, then ``val_fraction`` of the
  rest for val; ``MTLData.info["split"]`` says which was used. AdaShare's own input
  normalisation (BGR minus the Caffe mean) and its 0.5-1.5 scale + 321x321 crop are not
  reproduced: every loader here gives RGB in [0, 1] and uses ``mtlbench.loaders.augment``.

Options: ``resize: [H, W]`` resizes every sample (bilinear for image/depth/normals with
normals renormalised, nearest for labels); ``augment`` (train split only): MTAN's random
scale-crop (``scales``) + horizontal flip. Tasks: ``seg`` (SegmentationTask, ignore -1),
``depth`` (DepthTask), ``normal`` (NormalTask); ``upsample_align_corners``,
``metric_aggregation``, ``miou_classes``: the dense conventions (``mtlbench.tasks.dense``).

This module also holds the helpers the other dense loaders share (file reading with
one-line ``DataError`` s, ``DenseDataset``, ``MTANFolder``, split carving).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlbench.loaders.augment import Augmenter, resize_sample
from mtlbench.core.data import DataError, DatasetSplit, MTLData, carve_val_indices
from mtlbench.tasks.dense import DenseConventions, DepthTask, NormalTask, SegmentationTask
from mtlbench.core.registry import DATASETS

NYU_TEST_FRACTION = 654 / 1449


# ----------------------------------------------------------------------------- reading
def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_npy(path: Path, layout: str) -> np.ndarray:
    """A memory-mapped .npy array; one-line DataError when missing or unreadable."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"missing file {path}; expected layout: {layout}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({_why(exc)}): truncated or not a .npy array; "
                        f"re-create or re-download it") from None


def read_png(path: Path, layout: str) -> np.ndarray:
    """A PNG as a numpy array (uint8, or uint16 for 16-bit greyscale)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            a = np.array(im)
    except FileNotFoundError:
        raise DataError(f"missing file {path}; expected layout: {layout}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"cannot read {path} ({_why(exc)}): truncated or not a PNG image; "
                        f"re-create or re-download it") from None
    if a.dtype == np.int32 and a.ndim == 2:  # some Pillow versions open 16-bit PNGs as mode "I"
        a = a.astype(np.uint16)
    return a


def bad(path, a, expected: str) -> DataError:
    return DataError(f"{path}: expected {expected}, got shape {tuple(a.shape)} dtype {a.dtype}; "
                     f"re-create the file")


def image_array(path, a, hw=None) -> torch.Tensor:
    """HxWx3 (uint8 or float in [0, 1]; an alpha channel is dropped) -> float [3,H,W]."""
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype.kind not in "uf" or (hw and a.shape[:2] != hw):
        raise bad(path, a, f"an {'x'.join(map(str, hw or ('H', 'W')))}x3 RGB image (uint8 or float)")
    x = np.array(a[..., :3], dtype=np.float32, order="C")  # a copy: never a view of the memmap
    if a.dtype.kind == "u":
        x /= float(np.iinfo(a.dtype).max)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: image has non-finite values; re-create the file")
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def map_array(path, a, channels: int, hw, what: str) -> torch.Tensor:
    """HxW or HxWxC float map -> float [C,H,W] (finite)."""
    if a.ndim == 2 and channels == 1:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] != channels or a.dtype.kind != "f" or (hw and a.shape[:2] != hw):
        raise bad(path, a, f"a {'x'.join(map(str, hw or ('H', 'W')))}x{channels} float {what} map")
    x = np.array(a, dtype=np.float32, order="C")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {what} map has non-finite values; re-create the file")
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def label_array(path, a, num_classes: int, hw, ignore: Optional[int] = None) -> torch.Tensor:
    """HxW class map -> int64 [H,W] in -1..num_classes-1 (``ignore`` -> -1)."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.dtype.kind not in "iuf" or (hw and a.shape != hw):
        raise bad(path, a, f"a {'x'.join(map(str, hw or ('H', 'W')))} class map")
    y = np.asarray(a)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{path}: label map has non-finite values; re-create the file")
        y = np.rint(y)
    y = y.astype(np.int64)
    if ignore is not None:
        y[y == ignore] = -1
    lo, hi = int(y.min()), int(y.max())
    if lo < -1 or hi >= num_classes:
        raise DataError(f"{path}: labels must be -1 (ignore) or 0..{num_classes - 1}, found {lo}..{hi}; "
                        f"wrong dataset option (num_classes) or a damaged file")
    return torch.from_numpy(y)


# ----------------------------------------------------------------------------- datasets
class DenseDataset(Dataset):
    """``read(i) -> (x, {task: target})``; then optional resize, then optional augmentation."""

    def __init__(self, kinds: Dict[str, str], resize: Optional[Sequence[int]] = None,
                 augment: Optional[Augmenter] = None, ignore_values: Optional[dict] = None):
        self.kinds, self.augment = dict(kinds), augment
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.ignore_values = dict(ignore_values or {})

    def read(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int):
        x, t = self.read(int(i))
        if self.resize is not None:
            x, t = resize_sample(x, t, self.kinds, self.resize, self.ignore_values)
        if self.augment is not None:
            x, t = self.augment(x, t)
        return x, t


class MTANFolder(DenseDataset):
    """``<folder>/<sub>/<i>.npy`` per sample (MTAN's NYUv2 and Cityscapes layout).

    ``spec``: {task: (subfolder, kind, channels or num_classes)} with kind ``label``
    (int64 [H,W]) or a map kind of ``mtlbench.loaders.augment`` (float [C,H,W])."""

    def __init__(self, folder: Path, spec: Dict[str, Tuple[str, str, int]], layout: str, **kw):
        super().__init__({t: s[1] for t, s in spec.items()}, **kw)
        self.folder, self.spec, self.layout = Path(folder), spec, layout
        img = self.folder / "image"
        if not img.is_dir():
            raise DataError(f"missing folder {img}; expected layout: {layout}")
        self.ids = sorted(int(p.stem) for p in img.glob("*.npy") if p.stem.isdigit())
        if not self.ids:
            raise DataError(f"no <i>.npy files in {img}; expected layout: {layout}")
        for sub, _, _ in spec.values():
            d = self.folder / sub
            have = {p.name for p in d.glob("*.npy")} if d.is_dir() else set()
            missing = [i for i in self.ids if f"{i}.npy" not in have]
            if missing:
                raise DataError(f"missing file {d / f'{missing[0]}.npy'} ({len(missing)} of {sub}/ missing); "
                                f"expected layout: {layout}")
        self.hw = tuple(load_npy(img / f"{self.ids[0]}.npy", layout).shape[:2])

    def __len__(self) -> int:
        return len(self.ids)

    def sample_id(self, k: int) -> str:
        return str(self.folder / "image" / f"{self.ids[k]}.npy")

    def read(self, k: int):
        i = self.ids[k]
        path = self.folder / "image" / f"{i}.npy"
        x = image_array(path, load_npy(path, self.layout), self.hw)
        targets = {}
        for task, (sub, kind, c) in self.spec.items():
            path = self.folder / sub / f"{i}.npy"
            a = load_npy(path, self.layout)
            targets[task] = (label_array(path, a, c, self.hw) if kind == "label"
                             else map_array(path, a, c, self.hw, kind))
        return x, targets


def locate(root, sub: str, detect: Callable[[Path], bool]) -> Optional[Path]:
    """``root`` or ``root/sub``, whichever passes ``detect``."""
    if root is None:
        return None
    base = Path(root).expanduser()
    return next((p for p in (base, base / sub) if detect(p)), None)


def not_found(what: str, root, sub: str, layout: str) -> DataError:
    where = f"{root} (nor {Path(root) / sub})" if root else "(no dataset.root set)"
    return DataError(f"{what} not found at {where}: expected {layout}; set dataset.root=<folder>")


def augmenter(kinds, augment: bool, scales, ignore_values=None) -> Optional[Augmenter]:
    return Augmenter(kinds, scales, flip=True, ignore_values=ignore_values) if augment else None


def make_splits(train_aug, train_plain, test, val_fraction: float, split_seed: int, val=None,
                train_idx=None, num_workers: int = 0) -> dict:
    """train (augmenting) / val (carved from train unless given; never augmenting) / test."""
    def split(ds, idx=None):
        return DatasetSplit(ds, idx, num_workers=int(num_workers))

    if val is not None:
        return {"train": split(train_aug, train_idx), "val": val, "test": test}
    idx = torch.arange(len(train_aug)) if train_idx is None else torch.as_tensor(train_idx)
    if len(idx) < 2:
        raise DataError(f"only {len(idx)} training sample(s): cannot carve a validation split")
    tr, va = carve_val_indices(len(idx), float(val_fraction), int(split_seed))
    return {"train": split(train_aug, idx[tr]), "val": split(train_plain, idx[va]), "test": test}


# ----------------------------------------------------------------------------- NYUv2
MTAN_LAYOUT = "MTAN layout <root>/{train,val}/{image,label,depth,normal}/<i>.npy"
ADASHARE_LAYOUT = ("AdaShare layout <root>/{img,seg,normal_mask}/<id>.png + <root>/depth/<id>.npy "
                   "(optional <root>/nyu_v2_3task.json)")
NYU_SPEC = {"seg": ("label", "label", 13), "depth": ("depth", "depth", 1), "normal": ("normal", "normal", 3)}
NYU_KINDS = {"seg": "label", "depth": "depth", "normal": "normal"}


def _is_mtan(p: Path) -> bool:
    return (p / "train" / "image").is_dir()


def _is_adashare(p: Path) -> bool:
    return (p / "img").is_dir() and (p / "seg").is_dir()


class NYUv2AdaShare(DenseDataset):
    """AdaShare's NYUv2 files: ``items`` = [(img, seg, normal, depth) paths relative to root]."""

    def __init__(self, root: Path, items: List[Tuple[str, str, str, str]], hw, **kw):
        super().__init__(NYU_KINDS, **kw)
        self.root, self.items, self.hw = Path(root), items, hw

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, k: int) -> str:
        return str(self.root / self.items[k][0])

    def read(self, k: int):
        img, seg, nrm, dep = (self.root / p for p in self.items[k])
        L = ADASHARE_LAYOUT
        x = image_array(img, read_png(img, L), self.hw)
        s = read_png(seg, L)
        if s.dtype != np.uint8:
            raise bad(seg, s, "a uint8 class map (0..39, 255 = ignore)")
        n = read_png(nrm, L)
        if n.ndim != 3 or n.shape[2] != 3 or n.dtype != np.uint8 or n.shape[:2] != self.hw:
            raise bad(nrm, n, f"a {self.hw[0]}x{self.hw[1]}x3 uint8 normal image")
        v = n.astype(np.float32) / 255.0 * 2.0 - 1.0
        norm = np.linalg.norm(v, axis=2, keepdims=True)
        ok = (n != 255).all(axis=2, keepdims=True) & (norm > 0.5)
        v = np.where(ok, v / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
        return x, {"seg": label_array(seg, s, 40, self.hw, ignore=255),
                   "depth": map_array(dep, load_npy(dep, L), 1, self.hw, "depth"),
                   "normal": torch.from_numpy(v).permute(2, 0, 1).contiguous()}


def _adashare_items(root: Path, split_seed: int, test_fraction: float):
    """{split: items} from nyu_v2_3task.json, else a seeded split; and how it was made."""
    js = root / "nyu_v2_3task.json"
    if js.is_file():
        try:
            info = json.loads(js.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {js} ({_why(exc)}); fix or delete it") from None
        if isinstance(info, dict) and "train" in info and "test" in info:
            out = {k: [tuple(e) for e in info[k]] for k in ("train", "val", "test") if k in info}
            if any(len(e) != 4 for es in out.values() for e in es) or not (out["train"] and out["test"]):
                raise DataError(f"{js}: needs non-empty train and test lists of [img, seg, normal, depth] paths")
            return out, f"AdaShare split list {js.name}"
    ids = sorted(p.stem for p in (root / "img").glob("*.png"))
    if not ids:
        raise DataError(f"no images in {root / 'img'}; expected {ADASHARE_LAYOUT}")
    items = [(f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy") for i in ids]
    for it in items:
        for rel in it:
            if not (root / rel).is_file():
                raise DataError(f"missing file {root / rel}; expected {ADASHARE_LAYOUT}")
    if len(items) < 3:
        raise DataError(f"only {len(items)} image(s) in {root / 'img'}: a seeded train/val/test split needs 3")
    rest, test = carve_val_indices(len(items), float(test_fraction), int(split_seed))
    how = (f"seeded split (split_seed={split_seed}, test_fraction={test_fraction:.3f}): "
           f"no usable nyu_v2_3task.json in {root}")
    warnings.warn(f"nyuv2: {how}", stacklevel=3)
    return {"train": [items[i] for i in rest], "test": [items[i] for i in test]}, how


@DATASETS.register("nyuv2")
def nyuv2(root=None, split_seed: int = 0, format: str = "auto", val_fraction: float = 0.1,
          test_fraction: float = NYU_TEST_FRACTION, resize=None, augment: bool = True,
          scales: Sequence[float] = (1.0, 1.2, 1.5), num_workers: int = 0, upsample_align_corners: bool = True,
          metric_aggregation: str = "pixel", miou_classes: str = "union") -> MTLData:
    conv = DenseConventions(upsample_align_corners, metric_aggregation, miou_classes)
    if format not in ("auto", "mtan", "adashare"):
        raise DataError(f"dataset.format must be auto, mtan or adashare (got {format!r})")
    detect = {"auto": lambda p: _is_mtan(p) or _is_adashare(p), "mtan": _is_mtan, "adashare": _is_adashare}
    base = locate(root, "nyuv2", detect[format])
    layout = {"auto": f"{MTAN_LAYOUT} or {ADASHARE_LAYOUT}", "mtan": MTAN_LAYOUT, "adashare": ADASHARE_LAYOUT}
    if base is None:
        raise not_found("NYUv2", root, "nyuv2", layout[format])
    fmt = "mtan" if format == "mtan" or (format == "auto" and _is_mtan(base)) else "adashare"
    kw = dict(resize=resize)
    aug = augmenter(NYU_KINDS, augment, scales)
    if fmt == "mtan":
        make = lambda split, a: MTANFolder(base / split, NYU_SPEC, MTAN_LAYOUT, augment=a, **kw)  # noqa: E731
        test = DatasetSplit(make("val", None), num_workers=int(num_workers))
        splits = make_splits(make("train", aug), make("train", None), test, val_fraction, split_seed,
                             num_workers=num_workers)
        how, classes = f"MTAN train/ (val carved, val_fraction={val_fraction}) and val/ as test", 13
    else:
        items, how = _adashare_items(base, split_seed, test_fraction)
        hw = tuple(read_png(base / items["train"][0][0], ADASHARE_LAYOUT).shape[:2])
        make = lambda its, a: NYUv2AdaShare(base, its, hw, augment=a, **kw)  # noqa: E731
        dl = lambda ds: DatasetSplit(ds, num_workers=int(num_workers))  # noqa: E731
        val = dl(make(items["val"], None)) if items.get("val") else None
        splits = make_splits(make(items["train"], aug), make(items["train"], None),
                             dl(make(items["test"], None)), val_fraction, split_seed, val=val,
                             num_workers=num_workers)
        classes = 40
    shape = (3, *(splits["train"].dataset.resize or splits["train"].dataset.hw))
    tasks = [SegmentationTask("seg", classes, ignore_index=-1, conventions=conv), DepthTask("depth", conventions=conv),
             NormalTask("normal", conventions=conv)]
    return MTLData("nyuv2", tasks, shape, splits,
                   info={"format": fmt, "root": str(base), "split": how, "augment": repr(aug)})
