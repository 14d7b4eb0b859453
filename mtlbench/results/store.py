"""The results store: ``<results_dir>/<dataset>/<method>/<run_id>/``.

Each run folder holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per
epoch), ``.hydra/`` (Hydra's overrides and config) and ``run.json`` (written
atomically: temp file + rename, so a reader never sees half a file; files get the
umask's mode, see ``mtlbench.results.files``). While a run trains, ``.lock`` (an OS file
lock, ``RunFolder``) keeps any other process, on this node or another, from running the
same run id, and ``checkpoints/`` holds its checkpoints; both are gone once run.json is
written. ``read_run`` / ``iter_runs`` check each record's shape (``record_problem``): a
malformed run.json is skipped with a message naming it, never a crash of a report.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from mtlbench.results.files import WriteError, atomic_write_bytes, atomic_write_text, fault_point  # noqa: F401

# Keys that say where things go, not what is computed: left out of the run id.
NON_IDENTITY_KEYS = ("results_dir", "reports_dir", "data_root", "force", "resume",
                     "dataset.root", "trainer.progress", "trainer.progress_every", "logger", "hydra",
                     # switches that do not change a single-process result (resume is exact)
                     "trainer.checkpoint_every_steps", "trainer.find_unused_parameters", "trainer.sync_batchnorm")


# Options at their neutral value (the behaviour before the option existed) are left out
# too, so adding an option to the configs does not change the id of existing runs.
NEUTRAL_DEFAULTS = {"trainer.amp": None, "trainer.channels_last": False, "trainer.compile": False,
                    "balancer.mode": "auto", "balancer.heads": "scaled", "backbone.stem_stride": 1,
                    "dataset.metric_aggregation": "pixel", "dataset.miou_classes": "union",
                    "trainer.selection_k": 10, "procedure.sharing_form": "log_odds",
                    "procedure.search_eval_policy": "argmax"}


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


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):  # tensors and numpy arrays/scalars of any shape
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


class StoreError(RuntimeError):
    pass


class CorruptRun(StoreError):
    """An unreadable or malformed run.json; ``path`` and ``why`` (without the advice)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"corrupt run file {path}: {why}; delete that run folder or rerun the run "
                         f"(it is then run again)")
        self.path, self.why = Path(path), why


def read_run(run_dir: Path) -> Optional[dict]:
    """The run.json of ``run_dir`` (None: none); a StoreError naming the file when it is not
    JSON, not an object, or not a well-formed record (see ``record_problem``)."""
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptRun(p, f"not JSON ({str(exc).splitlines()[0]})") from exc
    problem = record_problem(rec)
    if problem:
        raise CorruptRun(p, problem)
    return rec


_STR, _DICT = ("run_id", "method", "dataset"), ("params", "flops", "selection", "data_sizes", "losses",
                                                 "higher_is_better", "procedure_info")


def record_problem(rec) -> Optional[str]:
    """Why ``rec`` is not a usable run record (None: it is): a JSON object with a string
    ``status``; a completed one also has string run_id / method / dataset, an integer seed,
    ``metrics`` = {split: {task: {metric: number}}} and object-valued (or null) params, flops,
    selection, data_sizes, losses, higher_is_better, procedure_info; tasks a list of names."""
    if not isinstance(rec, dict):
        return f"not a JSON object (a JSON {type(rec).__name__})"
    if not isinstance(rec.get("status"), str):
        return "no status"
    if rec["status"] != "completed":
        return None
    missing = [k for k in (*_STR, "seed", "metrics") if k not in rec]
    if missing:
        return f"a completed run without {', '.join(missing)}"
    bad = [k for k in _STR if not isinstance(rec[k], str)]
    bad += [] if isinstance(rec["seed"], int) and not isinstance(rec["seed"], bool) else ["seed"]
    bad += [k for k in _DICT if rec.get(k) is not None and not isinstance(rec[k], dict)]
    tasks = rec.get("tasks")
    bad += [] if tasks is None or (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)) else ["tasks"]
    m = rec["metrics"]
    ok = isinstance(m, dict) and all(isinstance(by_t, dict) and all(
        isinstance(by_m, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in by_m.values())
        for by_m in by_t.values()) for by_t in m.values())
    bad += [] if ok else ["metrics"]
    return f"malformed {', '.join(bad)}" if bad else None


class RunFolder:
    """One run's folder and its lock (``.lock``, a ``filelock.FileLock``: an OS file lock
    (flock), which the kernel (or the NFS server) drops when the holder dies, so there is
    no stale lock to take over and nothing to race; on shared storage whose file system
    supports locks (NFSv4, NFSv3 with lockd, Lustre mounted with flock, GPFS) two nodes
    cannot hold it at once). The holder removes the lock file before releasing it
    (filelock retries when the file it locked was unlinked meanwhile)."""

    def __init__(self, results_dir, dataset: str, method: str, run_id: str):
        self.path = Path(results_dir) / dataset / method / run_id
        self.run_id = run_id
        self._lock = None

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def record(self) -> Optional[dict]:
        return read_run(self.path)

    def is_completed(self) -> bool:
        try:
            rec = self.record()
        except StoreError:
            return False
        return bool(rec) and rec.get("status") == "completed"

    def acquire(self, wait: bool = False, on_wait=None) -> None:
        """Create the folder and take its lock. Held by another process: a StoreError, or
        with ``wait`` block until it is free (``on_wait(message)`` is called once first)."""
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run folder {self.path}: {exc.strerror or exc}; "
                             f"set results_dir= to a writable place") from exc
        lock = FileLock(str(self.lock_path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise StoreError(f"run {self.path} is being run by another process (lock {self.lock_path}, held "
                                 f"on this or another node); wait for it to finish: rerunning then skips "
                                 f"it") from None
            if on_wait is not None:
                on_wait(f"waiting for {self.path}: another process is running it")
            lock.acquire()
        except RuntimeError as exc:  # filelock: this thread already holds it through another instance
            raise StoreError(f"run {self.path} is already being run by this process (lock {self.lock_path})") \
                from exc
        except OSError as exc:
            raise StoreError(f"cannot lock {self.lock_path}: {exc.strerror or exc}; "
                             f"set results_dir= to a writable place") from exc
        self._lock = lock

    def try_acquire(self) -> bool:
        """Take the lock if it is free (False: another process holds it)."""
        try:
            self.acquire()
            return True
        except StoreError:
            return False

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)  # while held: no other holder can exist
        except OSError:
            pass
        try:
            self._lock.release()
        except OSError:
            pass
        self._lock = None

    def append_jsonl(self, name: str, row: dict) -> None:
        try:
            with open(self.path / name, "a") as f:
                f.write(json.dumps(row, default=_json_default) + "\n")
        except OSError as exc:
            raise WriteError(self.path / name, exc) from exc


def iter_runs(results_dir, problems: Optional[list] = None) -> Iterable[tuple[Path, dict]]:
    """(run folder, record) of every readable run under ``results_dir``. An unreadable or
    malformed run.json is skipped: appended to ``problems`` as (folder, message) when a list
    is given, else reported with a warning (one bad file never hides the other runs)."""
    root = Path(results_dir)
    if not root.is_dir():
        return
    for p in sorted(root.glob("*/*/*/run.json")):
        try:
            rec = read_run(p.parent)
        except CorruptRun as exc:
            if problems is None:
                warnings.warn(str(exc), stacklevel=2)
            else:
                problems.append((p.parent, exc.why))
            continue
        if rec is not None:
            yield p.parent, rec


def read_log(path: Path) -> tuple:
    """(rows of a metrics.jsonl, None) or (the rows before the first bad line, a message
    naming the file and the line)."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return rows, f"{path} is unreadable ({type(exc).__name__})"
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            return rows, f"{path} line {i} is not a JSON object (truncated or overwritten)"
        rows.append(row)
    return rows, None


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
