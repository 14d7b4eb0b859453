"""Shared helpers of the tabular dataset loaders (``datasets/{school,landmine,census_income,yeast}.py``).

Two layouts become ``TensorSplit``s:

* **one sample, one task** (School, Landmine: a MATLAB cell array with one array per task):
  the tasks' samples are pooled into one split; ``targets[t]`` holds task t's label on its
  own samples (0 elsewhere) and ``masks[t]`` marks them, so a batch mixes tasks and each
  task's loss / metrics see its own samples only. Splits are made PER TASK (each task's
  samples shuffled with ``split_seed``; ``train_fraction`` to train+val, the rest to test;
  ``val_fraction`` of that task's train part to val), stratified by label for binary
  tasks so that every task keeps positives in every split where it has enough of them;
  the pooled splits are then shuffled (seeded), so ``dataset.limit`` keeps a mix of tasks;
* **every sample, every task** (Census-Income, Yeast): a seeded row split, no masks.

Features are standardised with the mean / std of the TRAINING split only (a constant
column keeps std 1). Task subsets (``tasks=[...]`` or ``max_tasks=N``, the first N) are
applied before splitting, and samples of unselected tasks are dropped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mtlbench.core.data import DataError, TensorSplit


def find_file(root: Optional[str], folder: str, filename: str, how_to_get: str) -> Path:
    """``root/filename`` or ``root/folder/filename``; else a one-line DataError."""
    if root is None:
        raise DataError(f"{filename} not found: no dataset.root or data_root set; {how_to_get}")
    base = Path(os.path.expanduser(str(root)))
    for p in (base / filename, base / folder / filename):
        if p.is_file():
            return p
    raise DataError(f"{filename} not found in {base} or {base / folder}: {how_to_get}")


def choose_tasks(all_names: Sequence[str], tasks: Optional[Sequence[str]], max_tasks: Optional[int],
                 dataset: str) -> List[int]:
    """Indices of the selected tasks: ``tasks`` by name (in that order), else the first
    ``max_tasks``, else all."""
    names = list(all_names)
    if tasks:
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise DataError(f"dataset '{dataset}' has no task(s) {unknown[:5]}; its tasks: "
                            f"{names[:3]} ... {names[-1]} ({len(names)} in all)")
        return [names.index(t) for t in tasks]
    if max_tasks is not None:
        if int(max_tasks) < 1:
            raise ValueError(f"dataset.max_tasks must be >= 1 (got {max_tasks})")
        return list(range(min(int(max_tasks), len(names))))
    return list(range(len(names)))


def check_fractions(train_fraction: float, val_fraction: float) -> None:
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"dataset.train_fraction must be in (0, 1) (got {train_fraction})")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"dataset.val_fraction must be in (0, 1) (got {val_fraction})")


def _cut(idx: np.ndarray, train_fraction: float, val_fraction: float) -> Tuple[np.ndarray, ...]:
    n = len(idx)
    n_trval = int(round(n * train_fraction))
    n_trval = min(max(n_trval, 1), n - 1) if n >= 2 else n
    n_val = int(round(n_trval * val_fraction))
    n_val = min(max(n_val, 1), n_trval - 1) if n_trval >= 2 else 0
    return idx[n_val:n_trval], idx[:n_val], idx[n_trval:]


def per_task_split(groups: Sequence[np.ndarray], train_fraction: float, val_fraction: float, seed: int,
                   strata: Optional[Sequence[np.ndarray]] = None,
                   task_ids: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Row indices of train / val / test, split within each task's row indices ``groups[k]``
    (stratified by ``strata[k]`` labels when given), then shuffled across tasks.

    Each task's split is drawn from its own generator seeded by ``(seed, task_ids[k])``
    (the task's index in the full dataset), so a task gets the same train / val / test
    samples whatever other tasks are selected with it (task grouping compares a task
    trained alone with the same task trained in a pair on the same val samples)."""
    ids = list(range(len(groups))) if task_ids is None else [int(i) for i in task_ids]
    out: Dict[str, List[np.ndarray]] = {"train": [], "val": [], "test": []}
    for k, rows in enumerate(groups):
        rows = np.asarray(rows)
        rng = np.random.default_rng([int(seed), ids[k]])
        parts = [rows] if strata is None else [rows[strata[k] == c] for c in np.unique(strata[k])]
        for part in parts:
            tr, va, te = _cut(rng.permutation(part), train_fraction, val_fraction)
            out["train"].append(tr), out["val"].append(va), out["test"].append(te)
    rng = np.random.default_rng([int(seed), len(ids) and max(ids) + 1])
    return {s: rng.permutation(np.concatenate(v)) if v else np.zeros(0, dtype=np.int64) for s, v in out.items()}


def row_split(n: int, fractions: Tuple[float, float, float], seed: int) -> Dict[str, np.ndarray]:
    """A seeded train / val / test split of ``range(n)`` by ``fractions`` (summing to 1)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1 (got {list(fractions)})")
    perm = np.random.default_rng(seed).permutation(n)
    n_tr, n_va = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return {"train": perm[:n_tr], "val": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}


def standardizer(x_train: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, std) per column of the training features; constant columns keep std 1."""
    x = x_train.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def pooled_splits(x: np.ndarray, y: np.ndarray, task_of_row: np.ndarray, names: Sequence[str],
                  index: Dict[str, np.ndarray], y_scale: Optional[Dict[str, Tuple[float, float]]] = None
                  ) -> Dict[str, TensorSplit]:
    """One-sample-one-task rows -> masked TensorSplits (features standardised on train).

    ``task_of_row[r]`` is the position in ``names`` of row r's task; ``y_scale[name] =
    (mean, std)`` standardises that task's targets (regression)."""
    mean, std = standardizer(x[index["train"]])
    out = {}
    for split, rows in index.items():
        xs = torch.from_numpy(((x[rows] - mean) / std).astype(np.float32))
        tid = torch.from_numpy(task_of_row[rows].astype(np.int64))
        ys = torch.from_numpy(y[rows].astype(np.float32))
        targets, masks = {}, {}
        for k, name in enumerate(names):
            m = tid == k
            t = ys.clone()
            if y_scale is not None:
                mu, sd = y_scale[name]
                t = (t - mu) / sd
            targets[name] = torch.where(m, t, torch.zeros_like(t))
            masks[name] = m
        out[split] = TensorSplit(xs, targets, masks, ids=torch.from_numpy(np.asarray(rows, dtype=np.int64)))
    return out


def dense_splits(x: np.ndarray, y: np.ndarray, names: Sequence[str], index: Dict[str, np.ndarray]
                 ) -> Dict[str, TensorSplit]:
    """Fully labelled rows (``y`` [N, T] of 0/1 or values) -> TensorSplits, features standardised on train."""
    mean, std = standardizer(x[index["train"]])
    out = {}
    for split, rows in index.items():
        xs = torch.from_numpy(((x[rows] - mean) / std).astype(np.float32))
        out[split] = TensorSplit(xs, {n: torch.from_numpy(y[rows, k].astype(np.float32)) for k, n in enumerate(names)},
                                 ids=torch.from_numpy(np.asarray(rows, dtype=np.int64)))
    return out


def task_scales(y: np.ndarray, task_of_row: np.ndarray, train_rows: np.ndarray, names: Sequence[str]
                ) -> Dict[str, Tuple[float, float]]:
    """Per-task (mean, std) of the regression targets on the training rows."""
    out = {}
    for k, name in enumerate(names):
        v = y[train_rows][task_of_row[train_rows] == k].astype(np.float64)
        mu = float(v.mean()) if len(v) else 0.0
        sd = float(v.std()) if len(v) > 1 else 1.0
        out[name] = (mu, sd if sd > 1e-12 else 1.0)
    return out


def cells(mat: dict, key: str, path: Path) -> List[np.ndarray]:
    """The arrays of a 1 x T MATLAB cell array ``key`` (as loaded by scipy.io.loadmat)."""
    if key not in mat:
        raise DataError(f"{path} has no variable '{key}' (found {sorted(k for k in mat if not k.startswith('__'))}); "
                        f"expected the MALSAR / Xue et al. layout")
    arr = mat[key]
    return [np.asarray(a) for a in arr.reshape(-1)]


def load_mat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:  # a damaged / non-MATLAB file
        raise DataError(f"cannot read {path} as a MATLAB file ({type(exc).__name__}: {exc}); "
                        f"replace it with an intact copy") from exc


def pool_cells(xs: List[np.ndarray], ys: List[np.ndarray], keep: Sequence[int], path: Path
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[np.ndarray]]:
    """Concatenate the kept tasks' cells: (x [N, D], y [N], task position [N], rows per task)."""
    if len(xs) != len(ys):
        raise DataError(f"{path}: {len(xs)} feature cells but {len(ys)} label cells")
    x_parts, y_parts, t_parts, groups, start = [], [], [], [], 0
    for pos, k in enumerate(keep):
        xk, yk = np.asarray(xs[k], dtype=np.float64), np.asarray(ys[k], dtype=np.float64).reshape(-1)
        if xk.ndim != 2 or xk.shape[0] != yk.shape[0]:
            raise DataError(f"{path}: task {k + 1} has features {xk.shape} but {yk.shape[0]} labels")
        x_parts.append(xk), y_parts.append(yk), t_parts.append(np.full(len(yk), pos))
        groups.append(np.arange(start, start + len(yk)))
        start += len(yk)
    return np.concatenate(x_parts), np.concatenate(y_parts), np.concatenate(t_parts), groups


def read_cell_tasks(root: Optional[str], dataset: str, filename: str, how_to_get: str, x_key: str, y_key: str,
                    name_of, tasks: Optional[Sequence[str]], max_tasks: Optional[int]):
    """A MATLAB file holding one (features, labels) cell pair per task (School, Landmine):
    ``(path, names, keep, x, y, task position per row, rows per task)`` for the selected tasks;
    ``name_of(k)`` names task k (0-based)."""
    path = find_file(root, dataset, filename, how_to_get)
    mat = load_mat(path)
    xs, ys = cells(mat, x_key, path), cells(mat, y_key, path)
    all_names = [name_of(k) for k in range(len(xs))]
    keep = choose_tasks(all_names, tasks, max_tasks, dataset)
    x, y, tid, groups = pool_cells(xs, ys, keep, path)
    return path, [all_names[k] for k in keep], keep, x, y, tid, groups
