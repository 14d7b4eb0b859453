"""Files that no fault can leave half written.

* ``atomic_write_bytes`` / ``atomic_write_text``: a temp file beside the target
  (``.<name>.<pid>.<token>.tmp``, created with mode 0666 so the umask decides the final
  mode: 0644 by default, group-readable results on shared storage under umask 002),
  flushed and fsynced, then renamed over the target. A reader sees the old file or the new
  one, never a part. Any error removes the temp file and is re-raised as ``WriteError``
  naming the file and the fix (a full disk gives "No space left on device" plus the path,
  not a bare ``[Errno 28]``).
* ``remove_temp_files(folder)``: the temp files a killed writer (SIGKILL cannot clean up)
  left in a folder the caller owns (a locked run folder, a report folder).
* ``fault_point(event)``: fault injection for the kill tests and ``bench faults``. With
  ``MTLBENCH_KILL_AT="<event>:<n>"`` the process SIGKILLs itself the n-th time it reaches
  ``event``. Events: ``write`` (a temp file written, not yet renamed), ``pt`` (a
  checkpoint's .pt written, its sidecar not yet), ``save`` (a checkpoint complete),
  ``epoch`` (an epoch's log row written, its checkpoint not yet), ``eval`` (inside an
  evaluation), ``record`` (run.json written, the checkpoints not yet removed). With
  ``MTLBENCH_FAULT_COUNTS=<file>`` the number of times each event was reached is written
  there at exit (how ``bench faults`` picks its kill points). Does nothing without them.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Union

_events: dict = {}


def fault_point(event: str) -> None:
    spec, counts = os.environ.get("MTLBENCH_KILL_AT"), os.environ.get("MTLBENCH_FAULT_COUNTS")
    if not spec and not counts:
        return
    if counts and not _events:
        import atexit

        atexit.register(_dump_counts, counts)
    _events[event] = _events.get(event, 0) + 1
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == event and str(_events[event]) == n:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _dump_counts(path: str) -> None:
    import json

    with open(path, "w") as f:
        json.dump(_events, f)


class WriteError(OSError):
    """A write that failed; ``str()`` names the file, the cause and the fix."""

    def __init__(self, path: Path, exc: OSError):
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        why = self.strerror or "write failed"
        fix = ("free space there (or point results_dir= / reports_dir= elsewhere) and rerun"
               if self.errno == 28 else "make that folder writable (or point results_dir= / reports_dir= elsewhere)")
        return f"cannot write {self.path}: {why}; {fix}"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def is_temp_file(p: Path) -> bool:
    """A writer's temp file: ``.<name>.….tmp`` (or the data cache's ``.tmp.npz``)."""
    return p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".tmp.npz"))


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    path = Path(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("write")
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from exc
        raise


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temp_files(folder: Union[str, Path], recursive: bool = True) -> int:
    """Remove the temp files of killed writers under ``folder`` (the caller owns it: no live
    writer can be using them); returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in (folder.rglob(".*") if recursive else folder.glob(".*")):
        if p.is_file() and is_temp_file(p):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n
