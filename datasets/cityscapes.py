"""Cityscapes (Cordts et al. 2016) in MTAN's preprocessed layout: segmentation + disparity.

Layout (lorenmt/mtan, ``im2im_pred/create_dataset.py``; LibMTL uses the same files),
read lazily from ``dataset.root`` (or ``<root>/cityscapes``), one file per sample::

    <root>/{train,val}/image/<i>.npy      128x256x3 float RGB in [0, 1]
    <root>/{train,val}/label_7/<i>.npy    128x256 classes 0..6,  -1 = ignore
    <root>/{train,val}/label_19/<i>.npy   128x256 classes 0..18, -1 = ignore
    <root>/{train,val}/depth/<i>.npy      128x256x1 disparity, 0 = invalid

Option ``num_classes`` (7 or 19) picks ``label_7`` or ``label_19`` (only that folder is
needed). MTAN's ``val/`` folder IS the test split (2,975 train / 500 test images); our val
split is carved from train (``val_fraction``, seeded by ``split_seed``) and read without
augmentation. Tasks: ``seg`` (SegmentationTask, ignore -1) and ``depth`` (DepthTask on the
disparity maps, valid = > 0: MTAN's abs / rel error on disparity).

Augmentation (train split only, ``augment``): MTAN's random scale-crop + horizontal flip.
One deliberate difference: zooming in by ``s`` multiplies disparity by ``s`` (disparity is
inverse depth), where MTAN's RandomScaleCrop divides it like depth. ``resize: [H, W]``
resizes every sample (bilinear for image and disparity, nearest for labels).
"""
from __future__ import annotations

from typing import Sequence

from mtlbench.core.data import DataError, DatasetSplit, MTLData
from mtlbench.datasets.nyuv2 import MTANFolder, augmenter, locate, make_splits, not_found
from mtlbench.tasks.dense import DenseConventions, DepthTask, SegmentationTask
from mtlbench.core.registry import DATASETS


def layout(num_classes: int) -> str:
    return f"MTAN layout <root>/{{train,val}}/{{image,label_{num_classes},depth}}/<i>.npy"


@DATASETS.register("cityscapes")
def cityscapes(root=None, split_seed: int = 0, num_classes: int = 7, val_fraction: float = 0.1,
               resize=None, augment: bool = True, scales: Sequence[float] = (1.0, 1.2, 1.5),
               num_workers: int = 0, upsample_align_corners: bool = True, metric_aggregation: str = "pixel",
               miou_classes: str = "union") -> MTLData:
    conv = DenseConventions(upsample_align_corners, metric_aggregation, miou_classes)
    num_classes = int(num_classes)
    if num_classes not in (7, 19):
        raise DataError(f"dataset.num_classes must be 7 or 19 for Cityscapes (got {num_classes})")
    lay = layout(num_classes)
    base = locate(root, "cityscapes", lambda p: (p / "train" / "image").is_dir())
    if base is None:
        raise not_found("Cityscapes", root, "cityscapes", lay)
    spec = {"seg": (f"label_{num_classes}", "label", num_classes), "depth": ("depth", "disparity", 1)}
    kinds = {t: s[1] for t, s in spec.items()}
    aug = augmenter(kinds, augment, scales)
    make = lambda split, a: MTANFolder(base / split, spec, lay, augment=a, resize=resize)  # noqa: E731
    test = DatasetSplit(make("val", None), num_workers=int(num_workers))
    splits = make_splits(make("train", aug), make("train", None), test, val_fraction, split_seed,
                         num_workers=num_workers)
    ds = splits["train"].dataset
    tasks = [SegmentationTask("seg", num_classes, ignore_index=-1, conventions=conv),
             DepthTask("depth", conventions=conv)]
    return MTLData("cityscapes", tasks, (3, *(ds.resize or ds.hw)), splits,
                   info={"root": str(base), "num_classes": num_classes, "augment": repr(aug),
                         "split": f"MTAN train/ (val carved, val_fraction={val_fraction}) and val/ as test"})
