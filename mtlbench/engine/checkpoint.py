"""Checkpoints for exact resume of a trainer fit.

A run folder holds, for each named slot of the run (``fit`` for a single run; a procedure
names its phases: ``warmup``, ``search``, ``retrain-0``, ``affinity``, ``group-0``...), a
sidecar ``checkpoints/<slot>.json`` (``epoch``, ``step``, ``done``, ``log_bytes``,
``serial``, ``file``) and the state ``checkpoints/<slot>.<serial>.pt`` it names. A save
writes the new .pt, then the sidecar (both atomically: temp file + rename), then removes
the previous .pt. The sidecar is the one commit record: a run killed at any instant
(SIGKILL included) leaves a sidecar naming a complete .pt whose state matches the
``log_bytes`` recorded with it, so the log cut on resume never drops a row that the loaded
state has already counted (a .pt without its sidecar is an unfinished save, removed on
resume by ``tidy``).

What a checkpoint holds (``session.snapshot``): model, optimizers, scheduler and balancer
state (buffers, parameters and the balancer's declared ``state_fields``), the epochs done,
the generators' states (data order, probes...), the procedure's own state
(``Session.state``: best-epoch state for ``selection=best``, a search's temperature and
best policy, TAG's affinity sums...), the epoch history, the RNG states of torch, numpy and
python at the checkpoint, a mid-epoch cursor (step, partial loss sums, the generators'
states at the epoch's start: the epoch's batch order is replayed and the steps already
done are skipped), and the size of ``metrics.jsonl`` then (on resume the log is cut back
to the newest checkpoint's, so no epoch line is written twice). A finished phase keeps its
final model and result, so a resumed multi-phase procedure replays finished phases without
training or logging them again.

On CPU with the same seed a resumed run ends with exactly the run.json and metrics.jsonl of
an uninterrupted one, wall-clock fields aside (tested with real SIGKILLs at every kind of
point: ``tests/test_kill_anywhere.py``, ``python -m mtlbench bench faults``).
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtlbench.results.files import atomic_write_bytes, remove_temp_files
from mtlbench.results.files import fault_point as _fault_point

VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; ``str()`` names the file and the fix."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fault_point(event: str) -> None:
    """See ``mtlbench.results.files.fault_point`` (kept here for the kill tests' imports)."""
    _fault_point(event)


class CheckpointSlot:
    """Where one phase's checkpoint lives: ``<directory>/<name>.json``, the sidecar, is the
    commit record (``epoch``, ``step``, ``done``, ``log_bytes``, ``file``: the .pt it
    belongs to). A save writes a NEW ``<name>.<serial>.pt``, then the sidecar pointing at it,
    then removes the previous .pt: killed at any instant, the sidecar names a complete .pt
    whose state matches the ``log_bytes`` the log is cut back to (a .pt no sidecar names is
    an unfinished save and is removed on resume). ``log_path``: the run's metrics.jsonl."""

    def __init__(self, directory, name: str, log_path=None, writer: bool = True):
        self.dir, self.name = Path(directory), name
        self.writer = writer  # False on torchrun ranks > 0: they read rank 0's checkpoints
        self.log_path = Path(log_path) if log_path else None

    @property
    def meta_path(self) -> Path:
        return self.dir / f"{self.name}.json"

    def meta(self) -> Optional[dict]:
        """The sidecar (None: no checkpoint); a corrupt one is a one-line CheckpointError."""
        if not self.meta_path.is_file():
            return None
        return read_meta(self.meta_path)

    @property
    def path(self) -> Path:
        """The .pt the sidecar names (``<name>.pt`` for checkpoints written before serials)."""
        meta = self.meta() if self.meta_path.is_file() else None
        return self.dir / ((meta or {}).get("file") or f"{self.name}.pt")

    def save(self, state: dict) -> None:
        if not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        log_bytes = self.log_path.stat().st_size if self.log_path and self.log_path.is_file() else 0
        old = self.meta()
        serial = int((old or {}).get("serial", 0)) + 1
        target = self.dir / f"{self.name}.{serial}.pt"
        buf = io.BytesIO()
        torch.save({"version": VERSION, **state}, buf)
        atomic_write_bytes(target, buf.getvalue())
        fault_point("pt")
        meta = {"epoch": state["epoch"], "step": state["step"], "done": bool(state.get("done")),
                "log_bytes": log_bytes, "serial": serial, "file": target.name}
        atomic_write_bytes(self.meta_path, json.dumps(meta).encode())
        fault_point("save")
        previous = self.dir / ((old or {}).get("file") or f"{self.name}.pt")
        if previous != target:
            previous.unlink(missing_ok=True)

    def load(self) -> Optional[dict]:
        """The saved state, or None when there is none."""
        meta = self.meta()
        if meta is None:
            return None
        path = self.dir / (meta.get("file") or f"{self.name}.pt")
        fix = f"rerun with resume=false to start this run afresh (or delete {self.dir})"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} named by {self.meta_path} is missing; {fix}") from None
        except Exception as exc:
            raise CheckpointError(f"corrupt checkpoint {path} ({type(exc).__name__}); {fix}") from None
        if not isinstance(state, dict) or state.get("version") != VERSION:
            raise CheckpointError(f"checkpoint {path} is not an mtlbench v{VERSION} checkpoint; {fix}")
        return state


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
        int(meta["log_bytes"])
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"corrupt checkpoint metadata {path}; rerun with resume=false to start this run "
                              f"afresh (or delete {Path(path).parent})") from None


class CheckpointDir:
    """The run's checkpoint folder: hands out one ``CheckpointSlot`` per slot name (a name
    used twice in one run is a programming error of the procedure)."""

    def __init__(self, directory, log_path=None, writer: bool = True):
        self.dir, self.log_path, self.writer = Path(directory), log_path, writer
        self.used: set = set()

    def slot(self, name: str) -> CheckpointSlot:
        if name in self.used:
            raise RuntimeError(f"checkpoint slot '{name}' used twice in one run: give each phase its own name")
        if not name or any(ch in name for ch in "/\\") or name.startswith("."):
            raise ValueError(f"bad checkpoint slot name {name!r}")
        self.used.add(name)
        return CheckpointSlot(self.dir, name, self.log_path, self.writer)


def checkpoint_log_bytes(directory) -> Optional[int]:
    """The metrics.jsonl size recorded by the newest checkpoint in ``directory`` (None: none)."""
    sizes = [int(read_meta(meta)["log_bytes"]) for meta in Path(directory).glob("*.json")]
    return max(sizes) if sizes else None


def tidy(directory) -> None:
    """Remove what killed saves left in ``directory``: temp files and .pt files no sidecar names."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    remove_temp_files(directory)
    named = {read_meta(m).get("file") or f"{m.stem}.pt" for m in directory.glob("*.json")}
    for pt in directory.glob("*.pt"):
        if pt.name not in named:
            pt.unlink(missing_ok=True)
