"""Yeast multi-label gene functions (Elisseeff & Weston 2001; MULAN's version), embedded:
the copy bundled in the ``river`` package (``river.datasets.Yeast``: 2,417 genes, 103
features, 14 functional classes), no data root needed. ``river`` is the optional extra
``yeast`` (``pip install -e ".[yeast]"``; the ``dev`` extra includes it).

Tasks: the 14 labels ``Class1`` .. ``Class14``, each a binary task (``auc`` ↑,
``accuracy`` ↑), every sample labelled for every task (no masks). Split: seeded by
``dataset.split_seed`` (= ``${seed}``), ``fractions`` 60/20/20; features standardised on
train. Subsets: ``dataset.tasks=[Class1,...]`` or ``dataset.max_tasks=N``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mtlbench.core.data import DataError, MTLData
from mtlbench.core.registry import DATASETS
from mtlbench.tasks.tabular import BinaryTask
from mtlbench.loaders.tabular import choose_tasks, dense_splits, row_split


def load_arrays():
    """(x [2417, 103] float32, y [2417, 14] 0/1, label names) from river's bundled CSV."""
    import pandas as pd

    try:
        from river.datasets import Yeast
    except ImportError as exc:
        raise DataError("the yeast dataset is bundled in the optional 'river' package: pip install -e \".[yeast]\" "
                        "(or pip install river)") from exc
    df = pd.read_csv(Yeast().path)
    labels = [c for c in df.columns if c.startswith("Class")]
    feats = [c for c in df.columns if c not in labels]
    return df[feats].to_numpy(np.float32), df[labels].to_numpy(np.float32), labels


@DATASETS.register("yeast")
def build(root: Optional[str] = None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
          max_tasks: Optional[int] = None, fractions: Sequence[float] = (0.6, 0.2, 0.2),
          head_hidden: int = 0) -> MTLData:
    x, y, labels = load_arrays()
    keep = choose_tasks(labels, tasks, max_tasks, "yeast")
    names = [labels[k] for k in keep]
    index = row_split(len(x), tuple(float(f) for f in fractions), split_seed)
    splits = dense_splits(x, y[:, keep], names, index)
    return MTLData("yeast", [BinaryTask(n, head_hidden=head_hidden) for n in names], (x.shape[1],), splits)
