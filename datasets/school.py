"""School (ILEA London schools exam scores): 139 regression tasks, one per school.

File: ``school.mat`` (MALSAR's ``data/school.mat``), MATLAB cell arrays ``X`` (1 x 139, an
n_t x 28 array per school) and ``Y`` (1 x 139, n_t x 1 exam scores 1..70); 15,362 students.
Looked for at ``<root>/school.mat`` or ``<root>/school/school.mat``.

Protocol (Argyriou, Evgeniou & Pontil 2008; Bakker & Heskes 2003): a random 75/25
train/test split PER SCHOOL, repeated over seeds (``dataset.split_seed``, which the config
sets to ``${seed}``); val is carved from each school's training part (``val_fraction``).
Each student labels one task (masks, see ``mtlbench.loaders.tabular``). Targets are
standardised per school on its training rows; metrics are on the original score scale:
``rmse`` ↓, ``explained_variance`` ↑ (``mae`` ↓ with ``metrics=[rmse, mae, explained_variance]``).
Tasks are named ``s001`` .. ``s139`` (the cell index).
"""
from __future__ import annotations

from typing import Optional, Sequence

from mtlbench.core.data import MTLData
from mtlbench.core.registry import DATASETS
from mtlbench.tasks.tabular import RegressionTask
from mtlbench.loaders.tabular import check_fractions, per_task_split, pooled_splits, read_cell_tasks, task_scales

HOW = ("get it with `python -m mtlbench data school` (MALSAR's data/school.mat, github.com/jiayuzhou/MALSAR) "
       "or set dataset.root=<folder holding it>")


@DATASETS.register("school")
def build(root: Optional[str] = None, split_seed: int = 0, tasks: Optional[Sequence[str]] = None,
          max_tasks: Optional[int] = None, train_fraction: float = 0.75, val_fraction: float = 0.1,
          metrics: Sequence[str] = ("rmse", "explained_variance"), head_hidden: int = 0) -> MTLData:
    check_fractions(train_fraction, val_fraction)
    path, names, keep, x, y, tid, groups = read_cell_tasks(
        root, "school", "school.mat", HOW, "X", "Y", lambda k: f"s{k + 1:03d}", tasks, max_tasks)
    index = per_task_split(groups, train_fraction, val_fraction, split_seed, task_ids=keep)
    scales = task_scales(y, tid, index["train"], names)
    splits = pooled_splits(x, y, tid, names, index, scales)
    task_objs = [RegressionTask(n, *scales[n], head_hidden=head_hidden, metrics=list(metrics)) for n in names]
    return MTLData("school", task_objs, (x.shape[1],), splits,
                   info={"file": str(path), "n_tasks": len(names)})
