"""The results store: ``<results_dir>/<dataset>/<method>/<run_id>/``.

Each run folder holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
epoch), ``.hydra/`` (Hydra's overrides and config) and ``run.json`` (written
atomically: temp file + rename, so a reader never sees half a file). A ``.lock`` file
(O_EXCL) keeps two processes from running the same run id at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

# Keys that say where things go, not what is computed: left out of the run id.
NON_IDENTITY_KEYS = ("results_dir", "reports_dir", "data_root", "force", "resume",
                     "dataset.root", "trainer.progress", "hydra",
                     # switches that do not change a single-process result (resume is exact)
                     "trainer.checkpoint_every_steps", "trainer.find_unused_parameters", "trainer.sync_batchnorm")


# Options at their neutral value (the behaviour before the option existed) are left out
# too, so adding an option to the configs does not change the id of existing runs.
NEUTRAL_DEFAULTS = {"trainer.amp": None, "trainer.channels_last": False, "trainer.compile": False,
                    "balancer.mode": "auto", "dataset.metric_aggregation": "pixel", "dataset.miou_classes": "union"}


def config_hash(cfg: dict, n: int = 8) -> str:
    """Short hash of the resolved config without output paths and switches."""
    c = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    for key, neutral in NEUTRAL_DEFAULTS.items():
        node, leaf = key.split(".")
        if isinstance(c.get(node), dict) and leaf in c[node] and c[node][leaf] == neutral:
            c[node].pop(leaf)
    for key in NON_IDENTITY_KEYS:
        node, *rest = key.split(".")
        if not rest:
            c.pop(node, None)
        elif isinstance(c.get(node), dict):
            c[node].pop(rest[0], None)
    blob = json.dumps(c, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):  # tensors and numpy arrays/scalars of any shape
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def read_run(run_dir: Path) -> Optional[dict]:
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt run file {p}: {exc}; delete that run folder and rerun it") from exc


class StoreError(RuntimeError):
    pass


class RunFolder:
    def __init__(self, results_dir, dataset: str, method: str, run_id: str):
        self.path = Path(results_dir) / dataset / method / run_id
        self.run_id = run_id

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def record(self) -> Optional[dict]:
        return read_run(self.path)

    def is_completed(self) -> bool:
        try:
            rec = self.record()
        except StoreError:
            return False
        return bool(rec) and rec.get("status") == "completed"

    def acquire(self) -> None:
        """Create the folder and take its lock; fail clearly if another live process holds it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run folder {self.path}: {exc.strerror}; "
                             f"set results_dir= to a writable place") from exc
        lock = self.path / ".lock"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return
            except FileExistsError:
                if _pid_alive(lock):
                    raise StoreError(f"run {self.path} is being run by another process "
                                     f"(lock {lock}); wait for it or use force=true")
                lock.unlink(missing_ok=True)  # stale lock of a dead process
        raise StoreError(f"could not lock {lock}")

    def release(self) -> None:
        (self.path / ".lock").unlink(missing_ok=True)

    def append_jsonl(self, name: str, row: dict) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")


def _pid_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def iter_runs(results_dir) -> Iterable[tuple[Path, dict]]:
    root = Path(results_dir)
    if not root.is_dir():
        return
    for p in sorted(root.glob("*/*/*/run.json")):
        rec = read_run(p.parent)
        if rec is not None:
            yield p.parent, rec


RUN_COLUMNS = ["run_id", "dataset", "method", "arch", "balancer", "procedure", "backbone", "seed",
               "status", "params_total", "flops_total", "wall_time_s", "finished_at", "path"]


def load_runs(results_dir="results", status: Optional[str] = None) -> pd.DataFrame:
    """All runs as a tidy DataFrame: one row per (run, split, task, metric).

    Run-level columns (``RUN_COLUMNS``) repeat on each row; ``higher_is_better`` says
    the metric's direction. ``status='completed'`` keeps finished runs only.
    """
    rows = []
    for path, rec in iter_runs(results_dir):
        if status is not None and rec.get("status") != status:
            continue
        base = {
            "run_id": rec.get("run_id"), "dataset": rec.get("dataset"), "method": rec.get("method"),
            "arch": rec.get("arch"), "balancer": rec.get("balancer"), "procedure": rec.get("procedure"),
            "backbone": rec.get("backbone"), "seed": rec.get("seed"), "status": rec.get("status"),
            "params_total": (rec.get("params") or {}).get("total"),
            "flops_total": (rec.get("flops") or {}).get("total"),
            "wall_time_s": rec.get("wall_time_s"), "finished_at": rec.get("finished_at"), "path": str(path),
        }
        hib = rec.get("higher_is_better", {})
        for split, by_task in (rec.get("metrics") or {}).items():
            for task, by_metric in by_task.items():
                for metric, value in by_metric.items():
                    rows.append({**base, "split": split, "task": task, "metric": metric,
                                 "value": value, "higher_is_better": hib.get(task, {}).get(metric)})
        if not rec.get("metrics"):
            rows.append({**base, "split": None, "task": None, "metric": None, "value": None,
                         "higher_is_better": None})
    cols = RUN_COLUMNS + ["split", "task", "metric", "value", "higher_is_better"]
    return pd.DataFrame(rows, columns=cols)
