"""The data layer: what every dataset hands the trainer.

A dataset builder (registered in ``DATASETS``) returns an ``MTLData``: its tasks,
the input shape and the ``train`` / ``val`` / ``test`` splits. A split yields
``Batch`` objects: inputs, a ``{task: target}`` dict and, where some samples are
unlabelled for some tasks, a ``{task: bool mask}`` dict.

``TensorSplit`` keeps a split in memory and batches by tensor indexing (no per-sample
Python work; ``mtlbench.core.graphs.GraphSplit`` does the same for graphs, whose batch input
is a ``GraphBatch``); ``carve_val`` makes a seeded validation split for datasets without one;
``limit`` caps the samples per split (the ``dataset.limit`` budget key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from mtlbench.core.tasks import Task

SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Missing or unreadable data; ``str()`` is one line naming the file and the fix."""


def require_path(path, what: str, how_to_get: str):
    """``path`` as a Path if it exists, else a one-line DataError saying what was looked
    for, where, and how to get it."""
    from pathlib import Path

    p = Path(path).expanduser() if path is not None else None
    if p is None or not p.exists():
        raise DataError(f"{what} not found at {p if p is not None else '(no dataset.root set)'}: {how_to_get}")
    return p


@dataclass
class Batch:
    x: torch.Tensor  # or a mtlbench.core.graphs.GraphBatch (graph datasets)
    targets: Dict[str, torch.Tensor]
    masks: Optional[Dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.x)  # a tensor's first dimension; a GraphBatch's number of graphs

    def to(self, device, non_blocking: bool = False) -> "Batch":
        if self.x.device == torch.device(device):
            return self
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        masks = None if self.masks is None else {k: mv(v) for k, v in self.masks.items()}
        return Batch(mv(self.x), {k: mv(v) for k, v in self.targets.items()}, masks)


class TensorSplit:
    """An in-memory split: ``x`` [N, ...], ``targets`` {task: [N, ...]}, optional masks {task: [N] bool},
    optional ``ids`` [N]: each sample's identity in its source (e.g. the row of a table), kept
    by ``subset`` so that splits can be checked disjoint (``sample_ids``)."""

    def __init__(self, x: torch.Tensor, targets: Dict[str, torch.Tensor],
                 masks: Optional[Dict[str, torch.Tensor]] = None, ids: Optional[torch.Tensor] = None):
        n = x.shape[0]
        for k, v in list(targets.items()) + list((masks or {}).items()) + ([("ids", ids)] if ids is not None else []):
            if v.shape[0] != n:
                raise ValueError(f"task '{k}' has {v.shape[0]} rows, inputs have {n}")
        self.x, self.targets, self.masks, self.ids = x, targets, masks, ids

    def __len__(self) -> int:
        return self.x.shape[0]

    def sample_ids(self) -> Optional[list]:
        """The samples' source identities (None: the split has none; compare contents)."""
        return None if self.ids is None else self.ids.tolist()

    def subset(self, idx: torch.Tensor) -> "TensorSplit":
        masks = None if self.masks is None else {k: v[idx] for k, v in self.masks.items()}
        return TensorSplit(self.x[idx], {k: v[idx] for k, v in self.targets.items()}, masks,
                           None if self.ids is None else self.ids[idx])

    def select_tasks(self, names: Sequence[str]) -> "TensorSplit":
        masks = None if self.masks is None else {k: self.masks[k] for k in names}
        return TensorSplit(self.x, {k: self.targets[k] for k in names}, masks, self.ids)

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


def collate(samples) -> Batch:
    """Stack ``(x, {task: y})`` or ``(x, {task: y}, {task: labelled})`` samples into a Batch."""
    xs = torch.stack([s[0] for s in samples])
    targets = {k: torch.stack([torch.as_tensor(s[1][k]) for s in samples]) for k in samples[0][1]}
    masks = None
    if len(samples[0]) > 2 and samples[0][2] is not None:
        masks = {k: torch.tensor([bool(s[2][k]) for s in samples]) for k in samples[0][2]}
    return Batch(xs, targets, masks)


class _Order:
    """A sampler whose order is set before each epoch (so a DataLoader can be reused)."""

    def __init__(self):
        self.order: List[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class _PerSampleSeed:
    """Reads ``dataset[i]`` with torch's RNG seeded for that sample (the sampler yields
    ``(i, seed)``), so random augmentation does not depend on which worker (or the main
    process) reads the sample: 0 or N DataLoader workers give the same batches."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        i, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[i]


class DatasetSplit:
    """A split backed by a map-style dataset (files read lazily, augmentation per sample).

    ``dataset[i]`` returns ``(x, {task: y})`` or ``(x, {task: y}, {task: labelled})``.
    ``indices`` restricts it (limit, carved val split); batches come from a DataLoader
    (``num_workers``, ``pin_memory``) in the order drawn from the trainer's generator,
    so data order is seeded; random augmentation must draw from torch's RNG (the
    DataLoader seeds worker RNGs from that generator).
    """

    def __init__(self, dataset, indices: Optional[Sequence[int]] = None, tasks: Optional[Sequence[str]] = None,
                 num_workers: int = 0, pin_memory="auto", persistent_workers="auto",
                 prefetch_factor: Optional[int] = None):
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices)
        self.tasks = list(tasks) if tasks is not None else None
        self.num_workers = int(num_workers or 0)
        # auto: pin host memory when a GPU will consume the batches; keep workers alive
        # between epochs when there are workers (no per-epoch process start-up)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.persistent_workers = (self.num_workers > 0 if persistent_workers == "auto"
                                   else bool(persistent_workers) and self.num_workers > 0)
        self.prefetch_factor = prefetch_factor if self.num_workers > 0 else None
        self._loaders: dict = {}

    @property
    def _loader_opts(self) -> dict:
        return dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                    persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)

    def __len__(self) -> int:
        return len(self.indices)

    def sample_ids(self) -> Optional[list]:
        """Each sample's identity (``dataset.sample_id(i)``, e.g. its file), or None when the
        dataset gives none."""
        fn = getattr(self.dataset, "sample_id", None)
        return None if fn is None else [fn(int(i)) for i in self.indices]

    def subset(self, idx) -> "DatasetSplit":
        return DatasetSplit(self.dataset, self.indices[torch.as_tensor(idx)], self.tasks, **self._loader_opts)

    def select_tasks(self, names: Sequence[str]) -> "DatasetSplit":
        return DatasetSplit(self.dataset, self.indices, names, **self._loader_opts)

    def _collate(self, samples) -> Batch:
        b = collate(samples)
        if self.tasks is not None:
            b.targets = {k: b.targets[k] for k in self.tasks}
            b.masks = None if b.masks is None else {k: b.masks[k] for k in self.tasks}
        return b

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None, drop_last: bool = False) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        order = self.indices[torch.randperm(len(self), generator=generator)] if shuffle else self.indices
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
        drop_last = drop_last and len(self) >= batch_size  # as TensorSplit: never an empty epoch
        key = (batch_size, drop_last)
        if key not in self._loaders:
            # one loader per batch geometry, reused across epochs (persistent workers stay
            # alive); each epoch sets its order in the sampler and reseeds the worker RNGs
            sampler, gen = _Order(), torch.Generator()
            loader = DataLoader(_PerSampleSeed(self.dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                collate_fn=self._collate, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, generator=gen,
                                persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)
            self._loaders[key] = (loader, sampler, gen)
        loader, sampler, gen = self._loaders[key]
        base = seed if seed is not None else 0
        sampler.order = [(i, (base + k) % 2**63) for k, i in enumerate(order.tolist())]
        gen.manual_seed(base)
        return iter(loader)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if (drop_last and n >= batch_size) else -(-n // batch_size)


def carve_val_indices(n: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train_indices, val_indices) of ``range(n)``, for datasets without a val split."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * fraction)))
    return perm[n_val:], perm[:n_val]


@dataclass
class MTLData:
    name: str
    tasks: List[Task]
    input_shape: Tuple[int, ...]
    splits: Dict[str, object]  # TensorSplit or DatasetSplit
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

    def example_input(self):
        """One sample's input, batched (what ``count_flops`` runs): the train split's own
        ``example_input()`` where it has one (graphs), else zeros of ``input_shape``."""
        make = getattr(self.splits["train"], "example_input", None)
        return make() if make is not None else torch.zeros((1, *self.input_shape))


def carve_val(train, fraction: float, seed: int):
    """Seeded split of an in-memory ``train`` split into (train, val) for datasets that
    ship no val split. (With augmentation, build val from a non-augmenting dataset over
    ``carve_val_indices`` instead.)"""
    tr, va = carve_val_indices(len(train), fraction, seed)
    return train.subset(tr), train.subset(va)


def check_counts(**counts) -> None:
    """One-line ValueError naming ``dataset.<key>`` unless every value is an integer >= 1."""
    for key, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"dataset.{key} must be an integer >= 1 (got {v!r})")


def apply_limit(data: MTLData, limit: Optional[int]) -> MTLData:
    """Keep at most ``limit`` samples per split (the first ones: splits are already shuffled)."""
    if limit is None:
        return data
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"dataset.limit must be an integer >= 1 or null for no limit (got {limit!r})")
    data.splits = {k: (s.subset(torch.arange(min(limit, len(s)))) if len(s) > limit else s)
                   for k, s in data.splits.items()}
    return data


CACHE_KEYS = "__keys__"


def cached_arrays(path, make: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """Arrays cached in one ``.npz`` at ``path`` (None = no cache), made by ``make()`` when the
    file is absent or damaged: unreadable, or missing one of the arrays its ``__keys__``
    manifest lists (a damaged cache is regenerated, never trusted). The file is written
    atomically (temp file + rename); an unwritable location (a directory in the way, a full
    disk) only skips caching, and the temp file is removed."""
    import os
    import time

    import numpy as np

    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                keys = [str(k) for k in z[CACHE_KEYS]] if CACHE_KEYS in z.files else None
                if keys is not None and set(keys) <= set(z.files):
                    return {k: z[k] for k in keys}
        except Exception:
            pass
        path.unlink(missing_ok=True)
    arrays = make()
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, **arrays, **{CACHE_KEYS: np.array(sorted(arrays))})
            os.replace(tmp, path)
            for old in path.parent.glob(f".{path.name}.*.tmp.npz"):  # of writers killed an hour ago or more
                if time.time() - old.stat().st_mtime > 3600:
                    old.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return arrays
