"""``python -m mtlbench clean [--failed] [--dry-run] [results_dir=...] [dataset=...]``.

Removes the run folders of failed runs (``run.json`` status ``failed``) and of unfinished
runs (no ``run.json``: killed, or crashed before writing it); ``--failed`` keeps the
unfinished ones (they may be resumed: rerunning the same command continues them from their
checkpoint). Never touched: completed runs, and any folder whose lock a live process holds
(a run in progress). ``--dry-run`` lists what would go. Keys: ``mtlbench/conf/clean.yaml``.
"""
from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import List, Optional, Tuple

from mtlbench.cli.kv import Spec

SPEC = Spec("clean", "python -m mtlbench clean [--failed] [--dry-run] [results_dir=DIR] [dataset=NAME]",
            "python -m mtlbench clean --failed --dry-run", flags={"--failed": "failed", "--dry-run": "dry_run"})


def locked(folder: Path) -> bool:
    """A live process holds the run's lock: a PID lock file of a live process, or an OS lock
    (``filelock``) someone holds."""
    lock = folder / ".lock"
    if not lock.exists():
        return False
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            pass
        except PermissionError:
            return True
    try:
        from filelock import FileLock, Timeout
    except ImportError:
        return False
    try:
        with FileLock(str(lock), timeout=0):
            return False
    except Timeout:
        return True
    except OSError:
        return False


def status_of(folder: Path) -> Tuple[str, Optional[str]]:
    """("completed" | "failed" | "unfinished", reason)."""
    f = folder / "run.json"
    if not f.is_file():
        return "unfinished", None
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        return "unfinished", "unreadable run.json"
    status = rec.get("status")
    if status == "completed":
        return "completed", None
    if status == "failed":
        return "failed", str(rec.get("reason") or "")
    return "unfinished", f"status {status!r}"


def run_folders(root: Path, dataset: Optional[str]) -> List[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*/*") if p.is_dir() and not any(
        part.startswith(".") for part in p.relative_to(root).parts) and (dataset is None or p.parts[-3] == dataset))


def main(args: List[str]) -> int:
    from mtlbench.cli.commands import command_config, fail

    c, msg = command_config("clean", args, SPEC.example)
    if msg:
        return fail(msg)
    root = Path(c["results_dir"]).expanduser()
    if not root.is_dir():
        return fail(f"no results store at {root}: set results_dir=<folder>")
    counts = {"failed": 0, "unfinished": 0, "completed": 0, "in progress": 0}
    verb = "would remove" if c["dry_run"] else "removed"
    for folder in run_folders(root, c["dataset"]):
        status, reason = status_of(folder)
        if status == "completed":
            counts["completed"] += 1
            continue
        if status == "unfinished" and c["failed"]:
            continue
        if locked(folder):
            counts["in progress"] += 1
            continue
        counts[status] += 1
        why = f": {textwrap.shorten(reason, 100, placeholder=' ...')}" if reason else ""  # cut at a word
        print(f"{verb} {folder} ({status}{why})")
        if not c["dry_run"]:
            shutil.rmtree(folder, ignore_errors=True)
            for parent in (folder.parent, folder.parent.parent):  # empty method / dataset folders
                if parent != root and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
    what = "failed" if c["failed"] else "failed or unfinished"
    print(f"[mtlbench] clean: {verb} {counts['failed'] + counts['unfinished']} {what} run(s) "
          f"({counts['failed']} failed, {counts['unfinished']} unfinished) under {root}; kept "
          f"{counts['completed']} completed, skipped {counts['in progress']} in progress")
    return 0
