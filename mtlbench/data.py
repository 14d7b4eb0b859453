"""The data layer: what every dataset hands the trainer.

A dataset builder (registered in ``DATASETS``) returns an ``MTLData``: its tasks,
the input shape and the ``train`` / ``val`` / ``test`` splits. A split yields
``Batch`` objects: inputs, a ``{task: target}`` dict and, where some samples are
unlabelled for some tasks, a ``{task: bool mask}`` dict.

``TensorSplit`` keeps a split in memory and batches by tensor indexing (no per-sample
Python work); ``carve_val`` makes a seeded validation split for datasets without one;
``limit`` caps the samples per split (the ``dataset.limit`` budget key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .tasks import Task

SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Missing or unreadable data; ``str()`` is one line naming the file and the fix."""


@dataclass
class Batch:
    x: torch.Tensor
    targets: Dict[str, torch.Tensor]
    masks: Optional[Dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        if self.x.device == torch.device(device):
            return self
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        masks = None if self.masks is None else {k: mv(v) for k, v in self.masks.items()}
        return Batch(mv(self.x), {k: mv(v) for k, v in self.targets.items()}, masks)


class TensorSplit:
    """An in-memory split: ``x`` [N, ...], ``targets`` {task: [N, ...]}, optional masks {task: [N] bool}."""

    def __init__(self, x: torch.Tensor, targets: Dict[str, torch.Tensor],
                 masks: Optional[Dict[str, torch.Tensor]] = None):
        n = x.shape[0]
        for k, v in list(targets.items()) + list((masks or {}).items()):
            if v.shape[0] != n:
                raise ValueError(f"task '{k}' has {v.shape[0]} rows, inputs have {n}")
        self.x, self.targets, self.masks = x, targets, masks

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        masks = None if self.masks is None else {k: v[idx] for k, v in self.masks.items()}
        return TensorSplit(self.x[idx], {k: v[idx] for k, v in self.targets.items()}, masks)

    def select_tasks(self, names: Sequence[str]) -> "TensorSplit":
        masks = None if self.masks is None else {k: self.masks[k] for k in names}
        return TensorSplit(self.x, {k: self.targets[k] for k in names}, masks)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None, drop_last: bool = False) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if (drop_last and n >= batch_size) else n
        for start in range(0, stop, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
            else:
                sl = order[start:start + batch_size]
            masks = None if self.masks is None else {k: v[sl] for k, v in self.masks.items()}
            yield Batch(self.x[sl], {k: v[sl] for k, v in self.targets.items()}, masks)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if (drop_last and n >= batch_size) else -(-n // batch_size)


@dataclass
class MTLData:
    name: str
    tasks: List[Task]
    input_shape: Tuple[int, ...]
    splits: Dict[str, TensorSplit]
    info: dict = field(default_factory=dict)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def __post_init__(self):
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset '{self.name}' lacks splits {missing}")

    def select_tasks(self, names: Sequence[str]) -> "MTLData":
        """The same data restricted to ``names`` (in that order)."""
        unknown = [n for n in names if n not in self.task_names]
        if unknown:
            raise DataError(f"dataset '{self.name}' has no task(s) {unknown}; its tasks: {self.task_names}")
        by_name = {t.name: t for t in self.tasks}
        return MTLData(self.name, [by_name[n] for n in names], self.input_shape,
                       {k: s.select_tasks(names) for k, s in self.splits.items()}, dict(self.info))

    def sizes(self) -> Dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def carve_val(train: TensorSplit, fraction: float, seed: int) -> Tuple[TensorSplit, TensorSplit]:
    """Seeded split of ``train`` into (train, val) for datasets that ship no val split."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    n_val = max(1, int(round(len(train) * fraction)))
    return train.subset(perm[n_val:]), train.subset(perm[:n_val])


def apply_limit(data: MTLData, limit: Optional[int]) -> MTLData:
    """Keep at most ``limit`` samples per split (the first ones: splits are already shuffled)."""
    if not limit:
        return data
    if limit < 0:
        raise ValueError("dataset.limit must be positive (or null for no limit)")
    data.splits = {k: (s.subset(torch.arange(min(limit, len(s)))) if len(s) > limit else s)
                   for k, s in data.splits.items()}
    return data
