"""Progress of long loops (training passes, evaluation, downloads).

On a terminal: a tqdm bar whose postfix shows the running loss. Elsewhere (nohup, SLURM,
a redirect): a plain line every ``every`` seconds with the step, the running loss,
samples/s and the ETA, so a log never stays silent for minutes. ``sink`` (the run's
``log.txt``) receives the plain lines in both cases.

The hot loop stays free of host syncs: ``update`` takes the running statistics as a
callable that is evaluated only when a line or a postfix is rendered (at most every
``refresh`` seconds on a terminal, every ``every`` seconds otherwise).

``mode``: ``"auto"`` / ``True`` (a bar on a terminal, lines otherwise), ``"lines"`` (always
lines), ``False`` / ``"none"`` (silent; ``sink`` still gets the lines).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Dict, Optional


def is_terminal() -> bool:
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_stats(stats: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in stats.items())


def silent(mode) -> bool:
    return mode is False or (isinstance(mode, str) and mode.lower() in ("false", "none", "off", "0"))


class Progress:
    """``with Progress(total, desc) as p: p.update(n, samples=..., stats=lambda: {...})``."""

    def __init__(self, total: Optional[int] = None, desc: str = "", *, mode="auto", every: float = 30.0,
                 initial: int = 0, unit: str = "step", what: str = "loss",
                 sink: Optional[Callable[[str], None]] = None, out: Optional[Callable[[str], None]] = None,
                 refresh: float = 1.0, bytes_mode: bool = False):
        self.total, self.desc, self.every, self.refresh = total, desc, float(every), float(refresh)
        self.n, self.start_n, self.samples = initial, initial, 0
        self.unit, self.what, self.sink, self.bytes_mode = unit, what, sink, bytes_mode
        self.out = out or (lambda line: print(line, flush=True))
        self.t0 = self.last_line = self.last_post = time.monotonic()
        self.stats_fn: Optional[Callable[[], Dict[str, float]]] = None
        self.bar = None
        quiet = silent(mode)
        self.lines = not quiet and (str(mode).lower() == "lines" or not is_terminal())
        if not quiet and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                            unit="B" if bytes_mode else "it", unit_scale=bytes_mode)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, samples: int = 0, stats: Optional[Callable[[], Dict[str, float]]] = None) -> None:
        self.n += n
        self.samples += samples
        if stats is not None:
            self.stats_fn = stats
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(n)
            if self.stats_fn is not None and now - self.last_post >= self.refresh:
                self.bar.set_postfix_str(fmt_stats(self.stats_fn()), refresh=False)
                self.last_post = now
        if (self.lines or self.sink is not None) and now - self.last_line >= self.every:
            self.last_line = now
            self.emit(self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """``<desc>: step 40/93 (43%) | loss left=0.53 right=0.61 | 812 samples/s | ETA 0:00:07``."""
        now = time.monotonic() if now is None else now
        dt = max(now - self.t0, 1e-9)
        done = self.n - self.start_n
        if self.bytes_mode:
            from mtlbench.loaders.download import human

            parts = [f"{human(self.n)}" + (f" of {human(self.total)}" if self.total else ""),
                     f"{human(done / dt)}/s"]
        else:
            of = f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else ""
            parts = [f"{self.unit} {self.n}{of}"]
            if self.stats_fn is not None:
                parts.append(f"{self.what} {fmt_stats(self.stats_fn())}")
            parts.append(f"{self.samples / dt:.0f} samples/s" if self.samples else f"{done / dt:.2f} {self.unit}s/s")
        if self.total and done > 0:
            parts.append(f"ETA {fmt_time((self.total - self.n) * dt / done)}")
        return f"{self.desc + ': ' if self.desc else ''}{' | '.join(parts)}"

    def emit(self, line: str) -> None:
        if self.lines:
            self.out(f"[mtlbench] {line}")
        if self.sink is not None:
            self.sink(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
