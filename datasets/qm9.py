"""QM9 (Ramakrishnan et al., Sci. Data 2014): 130,831 molecules, 11 regression targets, as
in the multi-task papers (Nash-MTL, FAMO, LibMTL's ``examples/qm9``; reference file
AvivNavon/nash-mtl ``experiments/quantum_chemistry/trainer.py``).

Sources (``dataset.source``):

* ``qm9pack`` (the default when no PyG root is found): the CSV files inside the installed
  ``qm9pack`` wheel (read with pandas; the package itself is never imported, its loader
  needs ``pkg_resources``). Rows sorted by QM9's index = PyTorch Geometric's order (both
  leave out the same 3,054 "uncharacterized" molecules: 130,831 left, 18.03 atoms on
  average, PyG's stated ~18.0). Bonds are perceived from the XYZ coordinates with RDKit and
  the 11 atom features computed as PyG's (``mtlbench.loaders.molecules``), once, with a
  progress bar, and cached under ``<root or data_root>/qm9/`` (``qm9_graphs_all.npz``, or a
  file per molecule subset when ``limit`` / ``n_*`` ask for a few);
* ``pyg``: a PyTorch Geometric ``QM9`` root (``dataset.root`` holding
  ``processed/data_v3.pt``), read as PyG processed it (its features, bonds and targets);
  ``auto`` picks it when that file exists under the root.

Targets: ``mtlbench.loaders.molecules.TARGETS`` (μ, α, ε_HOMO, ε_LUMO, ⟨R²⟩, ZPVE, U0, U, H,
G, c_v; energies in meV, U0/U/H/G as atomization energies). Each task is a regression task
(MSE on targets standardised with the TRAIN split's mean and std, ddof=1; the reference
code standardises with the whole dataset's statistics) whose metric ``mae`` is reported in
the units above (Nash-MTL's Table 2 units).

Split (the published protocol): a random permutation of the 130,831 molecules, test = its
first 10,000, val = the next 10,000, train = the other 110,831. The permutation is
``torch.randperm`` seeded by ``dataset.split_seed``, or read from ``dataset.split_file``
(a LibMTL ``random_split.t``: its split is then reproduced exactly; Nash-MTL shuffles with
the run's seed instead). ``n_train`` / ``n_val`` / ``n_test`` keep the first n of each split
(CPU-sized protocols); ``dataset.limit`` caps every split too, and only the molecules kept
are featurized.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from mtlbench.core.data import DataError, MTLData, cached_arrays
from mtlbench.core.graphs import GraphShape, GraphSplit, require_extra
from mtlbench.core.registry import DATASETS
from mtlbench.loaders import molecules as mol
from mtlbench.tasks.tabular import RegressionTask

N_MOLECULES, N_TEST, N_VAL = 130_831, 10_000, 10_000
SOURCES = ("auto", "qm9pack", "pyg")
PYG_FILE = Path("processed") / "data_v3.pt"


def qm9pack_csvs():
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset qm9 needs qm9pack (the optional extra 'qm9'): pip install -e \".[qm9]\"")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = [folder / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"qm9pack's data files not found ({missing[0]}): reinstall it with pip install qm9pack")
    return files


@functools.lru_cache(maxsize=1)
def _qm9pack_frame():
    """The columns used, read once per process (a sweep or a test session featurizing several
    molecule subsets parses the 225 MB of CSV once)."""
    import pandas as pd

    cols = ["Index", "Elements", "XYZ_Ang"] + [c for c, _, _, _ in mol.TARGETS.values()]
    df = pd.concat([pd.read_csv(f, usecols=cols) for f in qm9pack_csvs()], ignore_index=True)
    df = df.sort_values("Index", kind="stable").reset_index(drop=True)
    if len(df) != N_MOLECULES:
        raise DataError(f"qm9pack holds {len(df)} molecules, expected {N_MOLECULES}: reinstall qm9pack")
    return df


def read_qm9pack(positions: Optional[np.ndarray] = None):
    """qm9pack's rows (sorted by QM9 index) at ``positions`` (None: all)."""
    df = _qm9pack_frame()
    return df if positions is None else df.iloc[positions]


def featurize_rows(df, positions: np.ndarray) -> Dict[str, np.ndarray]:
    """Graph and target arrays of the molecules ``df`` (rows at ``positions``), with a progress bar."""
    from rdkit import RDLogger
    from tqdm.auto import tqdm

    RDLogger.DisableLog("rdApp.*")
    xs, pos, eis, bonds, ys, n_cnt, e_cnt, how = [], [], [], [], [], [], [], []
    rows = df.to_dict("records")
    for row in tqdm(rows, desc="qm9: perceiving bonds (once; cached)", disable=None if len(rows) > 2000 else True,
                    mininterval=2.0):
        elements, coords = mol.parse_elements(row["Elements"]), mol.parse_coords(row["XYZ_Ang"])
        g = mol.featurize(elements, coords)
        xs.append(g["x"])
        pos.append(coords.astype(np.float32))
        eis.append(g["edge_index"])
        bonds.append(g["bond"])
        ys.append([mol.target_values(row, elements)[t] for t in mol.TARGETS])
        n_cnt.append(len(elements))
        e_cnt.append(g["bond"].shape[0])
        how.append(g["how"])
    return {"x": np.concatenate(xs), "pos": np.concatenate(pos), "node_ptr": _ptr(n_cnt),
            "edge_index": np.concatenate(eis, 1), "bond": np.concatenate(bonds), "edge_ptr": _ptr(e_cnt),
            "y": np.asarray(ys, dtype=np.float64), "mol": np.asarray(positions, dtype=np.int64),
            "how": np.asarray(how, dtype=np.int8)}


def _ptr(counts) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def qm9pack_arrays(positions: np.ndarray, cache_dir: Optional[Path]) -> Dict[str, np.ndarray]:
    """Arrays of the molecules at ``positions`` (sorted): from the full cache when it exists,
    else featurized (all molecules: the full cache; a subset: a cache file of its own)."""
    require_extra({"rdkit": "rdkit", "qm9pack": "qm9pack", "torch_geometric": "torch-geometric"}, "dataset qm9")
    full = None if cache_dir is None else cache_dir / "qm9_graphs_all.npz"
    if full is not None and full.is_file() or len(positions) == N_MOLECULES:
        arrays = cached_arrays(full, lambda: featurize_rows(read_qm9pack(), np.arange(N_MOLECULES)))
        return arrays if len(positions) == N_MOLECULES else _take(arrays, positions)
    key = hashlib.sha1(np.ascontiguousarray(positions).tobytes()).hexdigest()[:16]
    part = None if cache_dir is None else cache_dir / f"qm9_graphs_{len(positions)}_{key}.npz"
    return cached_arrays(part, lambda: featurize_rows(read_qm9pack(positions), positions))


def _take(a: Dict[str, np.ndarray], positions: np.ndarray) -> Dict[str, np.ndarray]:
    split = _as_split(a)
    sub = split.subset(torch.as_tensor(np.searchsorted(a["mol"], positions)))
    return {"x": sub.x.numpy(), "pos": sub.pos.numpy(), "node_ptr": sub.node_ptr.numpy(),
            "edge_index": sub.edge_index.numpy(), "bond": sub.edge_attr.argmax(1).numpy(),
            "edge_ptr": sub.edge_ptr.numpy(), "y": sub.targets["y"].numpy(), "mol": sub.ids.numpy(),
            "how": a["how"][np.searchsorted(a["mol"], positions)]}


def _as_split(a: Dict[str, np.ndarray]) -> GraphSplit:
    bond = torch.as_tensor(a["bond"])
    attr = torch.nn.functional.one_hot(bond, len(mol.BOND_TYPES)).float() if "edge_attr" not in a \
        else torch.as_tensor(a["edge_attr"])
    return GraphSplit(torch.as_tensor(a["x"]), torch.as_tensor(a["pos"]), torch.as_tensor(a["node_ptr"]),
                      torch.as_tensor(a["edge_index"]), attr, torch.as_tensor(a["edge_ptr"]),
                      {"y": torch.as_tensor(a["y"])}, ids=torch.as_tensor(a["mol"]))


def pyg_arrays(root: Path) -> Dict[str, np.ndarray]:
    """A PyG ``QM9`` root's processed molecules (its features, bonds, positions, targets)."""
    require_extra({"torch_geometric": "torch-geometric"}, "dataset qm9 (source pyg)")
    from torch_geometric.data import InMemoryDataset

    path = root / PYG_FILE
    if not path.is_file():
        raise DataError(f"PyG QM9 processed file not found at {path}: give dataset.root=<the root you passed to "
                        f"torch_geometric.datasets.QM9> (holding processed/data_v3.pt), or dataset.source=qm9pack")
    ds = InMemoryDataset()
    ds.load(str(path))
    d, sl = ds._data, ds.slices
    cols = [mol.TARGETS[t][3] for t in mol.TARGETS]
    y = d.y[:, cols].double() * torch.tensor([mol.PYG_FACTOR[t] for t in mol.TARGETS], dtype=torch.float64)
    return {"x": d.x.float().numpy(), "pos": d.pos.float().numpy(), "node_ptr": sl["x"].numpy(),
            "edge_index": d.edge_index.numpy(), "edge_attr": d.edge_attr.float().numpy(),
            "edge_ptr": sl["edge_index"].numpy(), "y": y.numpy(), "mol": np.arange(len(sl["x"]) - 1),
            "bond": d.edge_attr.argmax(1).numpy()}


def permutation(n: int, split_seed: int, split_file: Optional[str]) -> torch.Tensor:
    """The published split's permutation: ``split_file`` (a torch-saved permutation, e.g.
    LibMTL's random_split.t) or torch.randperm seeded by ``split_seed``."""
    if split_file is None:
        return torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    path = Path(split_file).expanduser()
    if not path.is_file():
        raise DataError(f"dataset.split_file not found at {path}: give a torch-saved permutation of the "
                        f"{n} molecules (e.g. LibMTL's examples/qm9/random_split.t) or split_file=null")
    perm = torch.as_tensor(torch.load(path, weights_only=True)).long().flatten()
    if len(perm) != n or not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise DataError(f"dataset.split_file {path} is not a permutation of the {n} molecules "
                        f"(length {len(perm)}): use the file of the same QM9 version")
    return perm


def split_positions(perm: torch.Tensor, caps: Dict[str, Optional[int]]) -> Dict[str, np.ndarray]:
    """test = perm[:10000], val = perm[10000:20000], train = the rest; each cut to its cap."""
    parts = {"test": perm[:N_TEST], "val": perm[N_TEST:N_TEST + N_VAL], "train": perm[N_TEST + N_VAL:]}
    out = {}
    for k, p in parts.items():
        cap = caps.get(k)
        out[k] = p[:cap].numpy() if cap else p.numpy()
    return out


@DATASETS.register("qm9")
def build(root: Optional[str] = None, split_seed: int = 0, limit: Optional[int] = None, source: str = "auto",
          split_file: Optional[str] = None, n_train: Optional[int] = None, n_val: Optional[int] = None,
          n_test: Optional[int] = None) -> MTLData:
    if source not in SOURCES:
        raise ValueError(f"dataset.source must be one of {', '.join(SOURCES)} (got {source!r})")
    root_p = Path(root).expanduser() if root else None
    if source == "pyg" or (source == "auto" and root_p is not None and (root_p / PYG_FILE).is_file()):
        if root_p is None:
            raise DataError("dataset.source=pyg needs dataset.root=<your PyG QM9 root>")
        source, arrays = "pyg", pyg_arrays(root_p)
    else:
        source, arrays = "qm9pack", None
    caps = {k: min(v for v in (n, limit) if v) if (n or limit) else None
            for k, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    perm = permutation(N_MOLECULES if arrays is None else len(arrays["mol"]), split_seed, split_file)
    where = split_positions(perm, caps)
    if arrays is None:
        needed = np.unique(np.concatenate(list(where.values())))
        arrays = qm9pack_arrays(needed, None if root_p is None else root_p / "qm9")
    every = _as_split(arrays)
    rows = {k: torch.as_tensor(np.searchsorted(arrays["mol"], p)) for k, p in where.items()}
    y_train = every.targets["y"][rows["train"]]
    mean, std = y_train.mean(0), y_train.std(0) if len(y_train) > 1 else torch.ones(y_train.shape[1])
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = ((every.targets["y"] - mean) / std).float()
    every.targets = {t: z[:, k] for k, t in enumerate(mol.TARGETS)}
    splits = {k: every.subset(r) for k, r in rows.items()}
    tasks = [RegressionTask(t, float(mean[k]), float(std[k]), metrics=["mae"]) for k, t in enumerate(mol.TARGETS)]
    info = {"source": source, "units": {t: u for t, (_, _, u, _) in mol.TARGETS.items()}}
    if "how" in arrays:
        info["bonds_from_hueckel"] = int((np.asarray(arrays["how"]) > 0).sum())
    return MTLData("qm9", tasks, GraphShape(11, len(mol.BOND_TYPES)), splits, info)
