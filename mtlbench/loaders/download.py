"""Downloading a dataset archive: resume, verification, safe extraction.

* ``download(url, dest, ...)`` streams into ``dest.part``; a later call continues a partial
  ``.part`` with an HTTP ``Range`` request (a server that ignores it starts afresh), then
  checks the size and the sha256 / md5 when they are known and only then renames the file
  to ``dest``. A mismatch deletes the file and raises one line naming both values.
* ``extract(archive, into)`` unpacks .zip / .tar / .tar.gz / .tgz, refusing members that
  would land outside ``into`` (absolute paths, ``..``, links); ``.gz`` of a single file is
  decompressed.

Only the standard library (urllib, hashlib, zipfile, tarfile).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Optional

from mtlbench.core.data import DataError

CHUNK = 1 << 16


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def human(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def _open(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "mtlbench"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)


def download(url: str, dest: Path, *, sha256: Optional[str] = None, md5: Optional[str] = None,
             size: Optional[int] = None, progress: Optional[Callable] = None, timeout: float = 60.0) -> Path:
    """``url`` -> ``dest`` (resumed from ``dest.part``, verified); returns ``dest``.

    ``progress(done_bytes, total_bytes_or_None)`` is called as bytes arrive."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the partial file is already whole: verify it below
            resp = None
        else:
            raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}; check the network "
                        f"(or download it yourself and pass archive=<file>)") from None
    if resp is not None:
        with resp:
            if start and resp.status != 206:  # Range ignored: start afresh
                start = 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length is not None else size
            done, last = start, 0.0
            with open(part, "ab" if start else "wb") as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, urllib.error.URLError) as exc:
                        raise DataError(f"download of {url} interrupted after {human(done)} ({exc}); run the "
                                        f"same command again to resume from {part}") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    now = time.monotonic()
                    if progress is not None and (now - last > 0.2 or done == total):
                        progress(done, total)
                        last = now
            if progress is not None:
                progress(done, total)
    verify(part, sha256=sha256, md5=md5, size=size, what=url)
    os.replace(part, dest)
    return dest


def verify(path: Path, *, sha256: Optional[str] = None, md5: Optional[str] = None, size: Optional[int] = None,
           what: str = "", delete: bool = True) -> None:
    """Check size, sha256, md5 (those given); a mismatch deletes ``path`` (unless ``delete`` is
    False) and raises one line."""
    checks = []
    if size is not None:
        checks.append(("size", str(int(size)), lambda: str(path.stat().st_size)))
    if sha256:
        checks.append(("sha256", sha256.lower(), lambda: file_hash(path, "sha256")))
    if md5:
        checks.append(("md5", md5.lower(), lambda: file_hash(path, "md5")))
    for name, expected, actual in checks:
        got = actual()
        if got != expected:
            if delete:
                path.unlink(missing_ok=True)
            raise DataError(f"{what or path}: {name} {got} does not match the expected {expected}"
                            + ("; the file was deleted: run the command again (a changed source needs url=/sha256=)"
                               if delete else ""))


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def extract(archive: Path, into: Path) -> None:
    """Unpack ``archive`` into ``into`` (created); refuses members outside it."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    name = archive.name.lower()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for m in z.namelist():
                    if not _inside(root, m):
                        raise DataError(f"{archive}: member {m!r} would land outside {into}; not extracted")
                z.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    if not _inside(root, m.name) or m.issym() or m.islnk() or m.isdev():
                        raise DataError(f"{archive}: member {m.name!r} is a link or lands outside {into}; "
                                        f"not extracted")
                t.extractall(into, members=members)
        elif name.endswith(".gz"):
            with gzip.open(archive, "rb") as src, open(into / archive.name[:-3], "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy2(archive, into / archive.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{archive} is not a readable archive ({exc}); delete it and download again") from None
