"""``python -m mtlbench data``: get a dataset from the source its reference code publishes.

``data <name>`` downloads (progress, resumable), verifies (where a size / checksum is
known: ``mtlbench/loaders/sources.py`` says which), extracts into ``<data_root>/<name>``
(where runs look by default) or ``root=``, and checks the layout; ``data check <name>``
says exactly what a copy lacks; ``data list`` prints every source and where its URL is
published. Keys: ``mtlbench/conf/data.yaml``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

from mtlbench.cli.kv import Spec

ACTIONS = ("download", "check", "list")


def _positional(words: List[str]) -> List[str]:
    out = []
    if words and words[0] in ACTIONS:
        out.append(f"action={words.pop(0)}")
    if words:
        out.append(f"name={words.pop(0)}")
    if words:
        from mtlbench.cli.kv import UsageError

        raise UsageError(f"data takes one dataset name (got {' '.join(words)!r} too); e.g. python -m mtlbench "
                         f"data check nyuv2 root=DIR")
    return out


SPEC = Spec("data", "python -m mtlbench data [download|check|list] <name> [root=DIR] [key=value ...]",
            "python -m mtlbench data nyuv2", sweeps=True, positional=_positional)


class _Bar:
    """download(progress=...) -> a byte progress bar (plain lines every 10 s off a terminal)."""

    def __init__(self, desc: str):
        self.desc, self.p = desc, None

    def __call__(self, done: int, total: Optional[int]) -> None:
        from mtlbench.engine.progress import Progress

        if self.p is None:
            self.p = Progress(total, self.desc, bytes_mode=True, every=10.0, initial=done)
        self.p.update(done - self.p.n)

    def close(self) -> None:
        if self.p is not None:
            self.p.close()


def fetch(url: str, dest: Path, desc: str, **verify) -> Path:
    from mtlbench.loaders.download import download

    bar = _Bar(desc)
    try:
        return download(url, dest, progress=bar, **verify)
    finally:
        bar.close()


def install(archive: Path, target: Path, src) -> None:
    """Extract ``archive`` and move the folder holding the layout to ``target`` (or copy a
    single file into ``target``)."""
    from mtlbench.core.data import DataError
    from mtlbench.loaders.download import extract
    from mtlbench.loaders.sources import find_layout

    target.mkdir(parents=True, exist_ok=True)
    if not src.extract:
        shutil.copy2(archive, target / src.filename)
        return
    tmp = target.parent / f".{target.name}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        print(f"[mtlbench] extracting {archive} ...", flush=True)
        extract(archive, tmp)
        found = find_layout(tmp, src.detect)
        if found is None:
            raise DataError(f"{archive} holds no {src.layout}: not the {src.dataset} ({src.name}) archive?")
        for child in found.iterdir():
            dest = target / child.name
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            shutil.move(str(child), str(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_sources() -> int:
    from mtlbench.loaders.sources import EMBEDDED, SOURCES

    for name, options in SOURCES.items():
        for s in options:
            where = s.url or f"manual: {s.manual}"
            print(f"{name} [{s.name}]: {where}\n    published: {s.published}\n    layout: {s.layout}"
                  + (f"\n    verified: {s.note}" if s.note else ""))
    for name, what in EMBEDDED.items():
        print(f"{name}: {what}")
    return 0


def report(name: str, target: Path, missing: List[str], data_root: Path) -> int:
    if missing:
        print(f"[mtlbench] {name} at {target} is incomplete; missing:")
        for line in missing:
            print(f"  - {line}")
        return 1
    how = f"dataset={name}" if target.resolve() == (data_root / name).resolve() else \
        f"dataset={name} dataset.root={target}"
    print(f"[mtlbench] {name}: complete at {target}; train with: python -m mtlbench run {how}")
    return 0


def main(args: List[str]) -> int:
    from mtlbench.cli.commands import command_config, fail
    from mtlbench.core.data import DataError
    from mtlbench.loaders import sources

    c, msg = command_config("data", args, SPEC.example)
    if msg:
        return fail(msg)
    if c["action"] not in ACTIONS:
        return fail(f"data action must be one of {', '.join(ACTIONS)} (got {c['action']!r})")
    if c["action"] == "list":
        return list_sources()
    name = c["name"]
    if not name:
        return fail("data needs a dataset name, e.g. python -m mtlbench data nyuv2 (python -m mtlbench data list "
                    "shows every source)")
    if name in sources.EMBEDDED:
        print(f"[mtlbench] {name}: {sources.EMBEDDED[name]}")
        return 0
    data_root = Path(c["data_root"]).expanduser()
    target = Path(c["root"]).expanduser() if c["root"] else data_root / name
    try:
        src = sources.source(name, c["source"])
        if c["action"] == "check":
            return report(name, target, sources.check(name, target, c["source"], c["domains"]), data_root)
        if not c["force"] and not c["archive"] and not sources.check(name, target, c["source"], c["domains"]):
            print(f"[mtlbench] {name}: a complete copy is already at {target} (force=true downloads it again)")
            return 0
        if name == "taskonomy":
            from mtlbench.cli.taskonomy import download_taskonomy

            download_taskonomy(c, target, src)
        else:
            get(c, target, src)
        return report(name, target, sources.check(name, target, c["source"], c["domains"]), data_root)
    except (DataError, ValueError, OSError) as exc:
        return fail(str(exc))


def get(c: dict, target: Path, src) -> None:
    from mtlbench.loaders.download import human, verify

    url = c["url"] or src.url
    if c["archive"]:
        archive = Path(c["archive"]).expanduser()
        if not archive.is_file():
            raise ValueError(f"archive={archive} is not a file")
        sha256 = c["sha256"] or src.sha256
        if sha256:  # a file the user gave is never deleted on a mismatch
            verify(archive, sha256=sha256, size=None if c["sha256"] else src.size, what=str(archive), delete=False)
        install(archive, target, src)
        return
    if url is None:
        raise ValueError(f"{src.dataset} ({src.name}) has no direct download: get it from {src.manual}, then run "
                         f"python -m mtlbench data {src.dataset} source={src.name} archive=<the downloaded file>")
    sha256 = c["sha256"] if c["url"] else (c["sha256"] or src.sha256)
    size = None if c["url"] else src.size
    dest = target.parent / f".{target.name}-{src.filename or Path(url.split('?')[0]).name}"
    checked = (f"size {human(size)}, " if size else "") + (f"sha256 {sha256[:12]}..." if sha256 else
                                                           "not verified: no checksum published")
    print(f"[mtlbench] {src.dataset} [{src.name}]: {url}\n[mtlbench]   published: {src.published}\n"
          f"[mtlbench]   check: {checked}; to {dest} (resumable)", flush=True)
    fetch(url, dest, src.dataset, sha256=sha256, size=size)
    install(dest, target, src)
    if not c["keep_archive"]:
        dest.unlink(missing_ok=True)
