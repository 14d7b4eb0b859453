"""Landmine detection (Xue, Liao, Carin & Krishnapuram, JMLR 2007): 29 binary tasks, one per field.

File: ``LandmineData.mat``, MATLAB cell arrays ``feature`` (1 x 29, n_t x 9 features) and
``label`` (1 x 29, n_t x 1 in {0, 1}); 14,820 samples, 904 positives. Looked for at
``<root>/LandmineData.mat`` or ``<root>/landmine/LandmineData.mat``.

Split: per field, stratified by label, ``train_fraction`` (0.75) to train+val (val =
``val_fraction`` of it), the rest to test, seeded by ``dataset.split_seed`` (= ``${seed}``).
Each sample labels one task (masks). Metrics per task: ``auc`` ↑ (the literature's
metric), ``accuracy`` ↑. Tasks are named ``f01`` .. ``f29`` (the cell index).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mtlbench.core.data import DataError, MTLData
from mtlbench.core.registry import DATASETS
from mtlbench.tasks.tabular import BinaryTask
from mtlbench.loaders.tabular import check_fractions, per_task_split, pooled_splits, read_cell_tasks

HOW = ("get it with `python -m mtlbench data landmine` (LandmineData.mat, Xue et al. 2007) "
       "or set dataset.root=<folder holding it>")


@DATASETS.register("landmine")
def build(root: Optional[str] = None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
          max_tasks: Optional[int] = None, train_fraction: float = 0.75, val_fraction: float = 0.1,
          head_hidden: int = 0) -> MTLData:
    check_fractions(train_fraction, val_fraction)
    path, names, keep, x, y, tid, groups = read_cell_tasks(
        root, "landmine", "LandmineData.mat", HOW, "feature", "label", lambda k: f"f{k + 1:02d}", tasks, max_tasks)
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"{path}: labels must be 0/1 (found {np.unique(y)[:5]})")
    index = per_task_split(groups, train_fraction, val_fraction, split_seed, strata=[y[g] for g in groups],
                           task_ids=keep)
    splits = pooled_splits(x, y, tid, names, index)
    return MTLData("landmine", [BinaryTask(n, head_hidden=head_hidden) for n in names], (x.shape[1],), splits,
                   info={"file": str(path), "n_tasks": len(names)})
