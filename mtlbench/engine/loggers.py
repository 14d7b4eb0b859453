"""What a run folder keeps of a run's progress, besides ``metrics.jsonl``.

* ``log.txt``: every line the run prints (``[mtlbench]`` lines, epoch lines, procedure
  phases and candidates) and the periodic progress lines of training (written even when
  the terminal shows a bar instead), each stamped with the UTC time.
* ``logger=csv`` (default): ``history.csv``, one row per epoch (per phase for multi-phase
  procedures), one column per logged value: ``train_loss/<task>``, ``val/<task>/<metric>``,
  ``val_loss/<task>``, ``lr``, ``balancer_weights/<task>``, ``epoch_time_s``, ...
  It is rewritten from ``metrics.jsonl`` after every epoch, so a resumed run's history has
  each epoch once.
* ``logger=tensorboard``: the csv history plus event files in ``<run folder>/tensorboard/``
  (``torch.utils.tensorboard.SummaryWriter``; the optional extra ``tensorboard``), one
  scalar per logged value, step = epoch, tags prefixed by the phase when there is one.

``load_history(results_dir)`` returns every run's per-epoch rows as one DataFrame.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

LOGGERS = ("csv", "tensorboard")


def flatten(row: dict, prefix: str = "") -> Dict[str, object]:
    """``{"val": {"left": {"accuracy": 0.9}}}`` -> ``{"val/left/accuracy": 0.9}`` (lists kept)."""
    out: Dict[str, object] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


class RunLog:
    """Appends stamped lines to ``<run folder>/log.txt``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, line: str) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.path, "a") as f:
                f.write(f"{stamp} {line}\n")
        except OSError:
            pass  # the log must never stop a run


def tee(say: Callable, log: Optional[RunLog]) -> Callable:
    """``say`` that also writes its line to ``log``."""
    if log is None:
        return say

    def both(*parts):
        log.write(" ".join(str(p) for p in parts))
        say(*parts)
    return both


def read_rows(metrics_jsonl: Path) -> List[dict]:
    rows = []
    if Path(metrics_jsonl).is_file():
        for line in Path(metrics_jsonl).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
    return rows


class CsvLogger:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def log(self, row: dict) -> None:
        import pandas as pd

        from mtlbench.results.store import atomic_write_text

        rows = [flatten(r) for r in read_rows(self.folder / "metrics.jsonl")]
        if rows:
            atomic_write_text(self.folder / "history.csv", pd.DataFrame(rows).to_csv(index=False))

    def close(self) -> None:
        pass


class TensorBoardLogger(CsvLogger):
    def __init__(self, folder: Path):
        super().__init__(folder)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("logger=tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\" "
                             "(or use logger=csv)") from exc
        self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def log(self, row: dict) -> None:
        super().log(row)
        phase = f"{row['phase']}/" if row.get("phase") else ""
        step = int(row.get("epoch", 0))
        for key, value in flatten(row).items():
            if key in ("epoch", "phase") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"{phase}{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_logger(node: Optional[dict], folder: Optional[Path]):
    """The run's epoch logger (None without a folder)."""
    name = (node or {}).get("name", "csv")
    if name not in LOGGERS:
        raise ValueError(f"unknown logger '{name}'; loggers: {', '.join(LOGGERS)}")
    if folder is None:
        return None
    return TensorBoardLogger(folder) if name == "tensorboard" else CsvLogger(folder)


def load_history(results_dir="results"):
    """Every run's per-epoch rows (``metrics.jsonl`` flattened as in ``history.csv``) as one
    DataFrame, with the run's ``dataset``, ``method``, ``run_id``, ``seed`` and ``status``."""
    import pandas as pd

    root = Path(results_dir)
    frames = []
    for log in sorted(root.glob("*/*/*/metrics.jsonl")) if root.is_dir() else []:
        folder = log.parent
        if any(p.startswith(".") for p in folder.relative_to(root).parts):
            continue
        try:
            rec = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        except ValueError:
            rec = {}
        rows = [flatten(r) for r in read_rows(log)]
        if not rows:
            continue
        df = pd.DataFrame(rows)
        df.insert(0, "dataset", folder.parts[-3])
        df.insert(1, "method", folder.parts[-2])
        df.insert(2, "run_id", folder.name)
        df.insert(3, "seed", rec.get("seed"))
        df.insert(4, "status", rec.get("status") or "unfinished")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["dataset", "method", "run_id", "seed", "status", "epoch"])
    return pd.concat(frames, ignore_index=True, sort=False)
