"""``python -m mtlbench data taskonomy``: the tiny split, one tar per building and domain.

Follows what the Omnidata download tool does for its ``taskonomy`` component
(EPFL-VILAB/omnidata ``omnidata_tools/dataset/starter_dataset/__init__.py``): the tar of
building ``b`` and domain ``d`` is ``<base>/<b>_<d>.tar`` with ``<base> =
https://datasets.epfl.ch/taskonomy/``, its md5 is listed in ``<base>/md5sum.txt``, and the
tar holds the folder ``<d>/``. Each tar is extracted into ``<root>/<b>/``, so the copy is
the loader's per-building layout ``<root>/<b>/<d>/point_<p>_view_<v>_domain_<d>.png``.
The building list is ``train_val_test_tiny.csv`` from StanfordVL/taskonomy's published
``splits_taskonomy.zip`` (written into ``<root>``, where the loader reads the split from);
``buildings=[...]`` replaces it. A building the server lacks is reported, the rest go on.
"""
from __future__ import annotations

import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Dict, List


def tiny_buildings(target: Path) -> List[str]:
    from mtlbench.loaders.download import download
    from mtlbench.loaders.sources import TASKONOMY_SPLITS

    zpath = download(TASKONOMY_SPLITS, target / ".splits_taskonomy.zip")  # no checksum published
    with zipfile.ZipFile(zpath) as z:
        name = next(n for n in z.namelist() if n.endswith("train_val_test_tiny.csv") and "__MACOSX" not in n)
        text = z.read(name).decode().replace("\r\n", "\n").replace("\r", "\n")
    (target / "train_val_test_tiny.csv").write_text(text)
    zpath.unlink()
    return [line.split(",")[0] for line in text.splitlines()[1:] if line.strip()]


def md5_table(url: str) -> Dict[str, str]:
    """{"<building>_<domain>.tar": md5} from the server's md5sum.txt ({} when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        print(f"[mtlbench] taskonomy: {url} unreachable: the tars are not md5-verified", flush=True)
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].rsplit("/", 1)[-1]] = parts[0]
    return out


def download_taskonomy(c: dict, target: Path, src) -> None:
    from mtlbench.cli.data import fetch
    from mtlbench.core.data import DataError
    from mtlbench.loaders.download import extract
    from mtlbench.loaders.sources import TASKONOMY_DOMAINS

    template = c["url"] or src.url
    target.mkdir(parents=True, exist_ok=True)
    buildings = list(c["buildings"]) if c["buildings"] else tiny_buildings(target)
    domains = list(c["domains"]) if c["domains"] else list(TASKONOMY_DOMAINS)
    md5 = md5_table(template.rsplit("/", 1)[0] + "/md5sum.txt")
    jobs = [(b, d) for b in buildings for d in domains]
    print(f"[mtlbench] taskonomy: {len(buildings)} buildings x {len(domains)} domains from {template}\n"
          f"[mtlbench]   published: {src.published}", flush=True)
    failed = []
    for k, (b, d) in enumerate(jobs, 1):
        folder = target / b / d
        if folder.is_dir() and any(folder.iterdir()) and not c["force"]:
            continue
        print(f"[mtlbench] taskonomy {k}/{len(jobs)}: {b} {d}", flush=True)
        name = f"{b}_{d}.tar"
        tar = target / ".downloads" / name
        try:
            fetch(template.format(building=b, domain=d), tar, f"{b} {d}", md5=md5.get(name))
            extract(tar, target / b)
            tar.unlink()
        except DataError as exc:
            failed.append(f"{b} {d} ({str(exc).splitlines()[0][:120]})")
    if failed:
        raise DataError(f"{len(failed)} of {len(jobs)} taskonomy tars failed, e.g. {failed[0]}; run the same "
                        f"command again to retry them (finished ones are kept)")
