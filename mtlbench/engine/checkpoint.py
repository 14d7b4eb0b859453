"""Checkpoints for exact resume of a trainer fit.

A run folder holds ``checkpoints/<slot>.pt`` for each named slot of the run (``fit`` for a
single run; a procedure names its phases: ``warmup``, ``search``, ``retrain-0``...), each
with a small sidecar ``<slot>.json`` (``epoch``, ``step``, ``done``, ``log_bytes``). Both are
written atomically (temp file + rename), the sidecar last, so a run killed at any instant
(SIGKILL included) leaves the previous complete checkpoint in place.

What a checkpoint holds (``Trainer.snapshot``): model, optimizers, scheduler and balancer
state (buffers, parameters and the balancer's declared ``state_fields``), the epochs done,
the generators' states (data order, probes...), the procedure's own state
(``Session.state``: best-epoch state for ``selection=best``, a search's temperature and
best policy...), the epoch history, the RNG states of torch, numpy and python at the
checkpoint, a mid-epoch cursor (step, partial loss sums, the generators' states at the
epoch's start: the epoch's batch order is replayed and the steps already done are
skipped), and the size of ``metrics.jsonl`` then (on resume the log is cut back to it, so
no epoch line is written twice). A finished fit keeps its final model and
result, so a resumed multi-phase procedure replays finished phases without training.

On CPU with the same seed a resumed run ends with exactly the metrics of an
uninterrupted one (tested with a real SIGKILL).
"""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

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


_events: dict = {}


def fault_point(event: str) -> None:
    """Fault injection for the kill tests and ``bench faults``: with the environment variable
    ``MTLBENCH_KILL_AT="<event>:<n>"`` this process SIGKILLs itself at the n-th time it
    reaches ``event`` (``pt``: a checkpoint's .pt written, its sidecar not yet; ``save``: a
    checkpoint complete). Does nothing otherwise."""
    spec = os.environ.get("MTLBENCH_KILL_AT")
    if not spec:
        return
    _events[event] = _events.get(event, 0) + 1
    name, _, n = spec.partition(":")
    if name == event and str(_events[event]) == n:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointSlot:
    """Where one phase's checkpoint lives (``<directory>/<name>.pt`` + sidecar).
    ``log_path``: the run's metrics.jsonl (its size is recorded for the cut on resume)."""

    def __init__(self, directory, name: str, log_path=None, writer: bool = True):
        self.dir, self.name = Path(directory), name
        self.writer = writer  # False on torchrun ranks > 0: they read rank 0's checkpoints
        self.log_path = Path(log_path) if log_path else None

    @property
    def path(self) -> Path:
        return self.dir / f"{self.name}.pt"

    @property
    def meta_path(self) -> Path:
        return self.dir / f"{self.name}.json"

    def save(self, state: dict) -> None:
        if not self.writer:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        log_bytes = self.log_path.stat().st_size if self.log_path and self.log_path.is_file() else 0
        buf = io.BytesIO()
        torch.save({"version": VERSION, **state}, buf)
        _atomic_bytes(self.path, buf.getvalue())
        fault_point("pt")
        meta = {"epoch": state["epoch"], "step": state["step"], "done": bool(state.get("done")),
                "log_bytes": log_bytes}
        _atomic_bytes(self.meta_path, json.dumps(meta).encode())
        fault_point("save")

    def load(self) -> Optional[dict]:
        """The saved state, or None when there is none (a .pt without its sidecar is an
        unfinished write and is ignored)."""
        if not self.meta_path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"corrupt checkpoint {self.path} ({type(exc).__name__}); delete it to "
                                  f"restart that phase, or rerun with resume=false") from None
        if not isinstance(state, dict) or state.get("version") != VERSION:
            raise CheckpointError(f"checkpoint {self.path} is not an mtlbench v{VERSION} checkpoint; "
                                  f"delete it or rerun with resume=false")
        return state


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
    sizes = []
    for meta in Path(directory).glob("*.json"):
        try:
            sizes.append(int(json.loads(meta.read_text())["log_bytes"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"corrupt checkpoint metadata {meta}; delete {Path(directory)} "
                                  f"or rerun with resume=false") from None
    return max(sizes) if sizes else None
