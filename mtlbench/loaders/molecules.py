"""Molecules as graphs, and QM9's targets in the units of the multi-task papers.

**Graph features** (those of PyTorch Geometric's ``QM9``, i.e. Gilmer et al.'s, 11 per atom):
one-hot element H/C/N/O/F (5), atomic number, aromatic, sp / sp2 / sp3 hybridisation (3),
number of bonded hydrogens; per bond, both directions, a one-hot type single / double /
triple / aromatic (4). Positions are the XYZ coordinates (Å), in the XYZ atom order.

**Bond perception** (``featurize``): from the 3-D structure, with RDKit:
``Chem.MolFromXYZBlock`` then ``rdDetermineBonds.DetermineBonds(mol, charge=0)``
(connectivity from van der Waals distances, then bond orders by Kim & Kim's xyz2mol), then
``Chem.SanitizeMol`` (RDKit's aromaticity and hybridisation). Where that fails (about 4.6%
of QM9: strained bicyclic molecules whose distance criterion adds a spurious bond and leaves
no valid bond orders) the connectivity comes from an extended-Hückel calculation
(``useHueckel=True``), which recovers all but 2 (kept with the Hückel connectivity, every
bond single). Atoms are never reordered: atom i of the graph
is line i of the XYZ block (tested on hand-checked molecules). On the first 20,000 QM9
molecules the perceived graph equals the graph of QM9's own (relaxed-geometry) SMILES up to
stereochemistry for all but one (a zwitterion drawn with the charge on another atom).
PyG's own QM9 reads bonds from the SDF unsanitised, so its aromatic / hybridisation
features are mostly 0 (PyG issue #2163); a PyG root (``dataset.root``) keeps PyG's features.

**Targets** (``TARGETS``): the 11 of Nash-MTL / LibMTL / FAMO (PyG target indices 0, 1, 2,
3, 5, 6, 12, 13, 14, 15, 11), in their reporting units: μ (D), α (a₀³), ε_HOMO, ε_LUMO (meV),
⟨R²⟩ (a₀²), ZPVE (meV), U0, U, H, G (meV, ATOMIZATION energies: the molecule's total energy
minus the sum of QM9's atomic reference energies of its atoms), c_v (cal/(mol K)). QM9
gives energies in Hartree; 1 Ha = 27.211386246 eV (PyG's ``HAR2EV``), × 1000 for meV.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np

HARTREE_TO_EV = 27.211386246
ELEMENTS = ("H", "C", "N", "O", "F")
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")

# QM9's atomic reference energies (Ramakrishnan et al., Sci. Data 1, 140022 (2014),
# atomref.txt of the data release), Hartree, per element: U0 (0 K), U, H, G (298.15 K).
# PyG's ``torch_geometric.datasets.qm9.atomrefs`` holds the same values in eV (tested).
ATOM_REFS_HARTREE = {
    "U0": {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730},
    "U": {"H": -0.498857, "C": -37.845355, "N": -54.582445, "O": -75.063163, "F": -99.717314},
    "H": {"H": -0.497912, "C": -37.844411, "N": -54.581501, "O": -75.062219, "F": -99.716370},
    "G": {"H": -0.510927, "C": -37.861317, "N": -54.598897, "O": -75.079532, "F": -99.733544},
}

MEV = HARTREE_TO_EV * 1000.0
# task name -> (qm9pack column, factor to the reporting unit, reporting unit, PyG target index)
TARGETS: Dict[str, Tuple[str, float, str, int]] = {
    "mu": ("Dipole_debye", 1.0, "D", 0),
    "alpha": ("Polarizability_bohr3", 1.0, "a0^3", 1),
    "homo": ("HOMO_au", MEV, "meV", 2),
    "lumo": ("LUMO_au", MEV, "meV", 3),
    "r2": ("R2_bohr2", 1.0, "a0^2", 5),
    "zpve": ("ZPVE_au", MEV, "meV", 6),
    "U0": ("InternalEnergy_0K_au", MEV, "meV", 12),
    "U": ("InternalEnergy_298K_au", MEV, "meV", 13),
    "H": ("Enthalphy_298K_au", MEV, "meV", 14),
    "G": ("GibbsFreeEnergy_298K_au", MEV, "meV", 15),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)", 11),
}
# PyG stores targets in eV (energies) or the units above: factor from PyG's y to ours
PYG_FACTOR = {t: (1000.0 if unit == "meV" else 1.0) for t, (_, _, unit, _) in TARGETS.items()}


def element_counts(elements: Sequence[str]) -> Dict[str, int]:
    return {e: sum(1 for a in elements if a == e) for e in ELEMENTS}


def atomization_hartree(total: float, elements: Sequence[str], kind: str) -> float:
    """Atomization energy (Hartree) of a molecule of total energy ``total`` (``kind``: U0, U,
    H or G): total minus the atomic reference energies of its atoms."""
    refs = ATOM_REFS_HARTREE[kind]
    return float(total) - sum(refs[a] for a in elements)


def target_values(row: Dict[str, float], elements: Sequence[str]) -> Dict[str, float]:
    """The 11 targets of one molecule in reporting units, from QM9's values (``row``: the
    qm9pack columns, energies in Hartree)."""
    out = {}
    for task, (col, factor, _, _) in TARGETS.items():
        v = float(row[col])
        if task in ATOM_REFS_HARTREE:
            v = atomization_hartree(v, elements, task)
        out[task] = v * factor
    return out


def xyz_block(elements: Sequence[str], coords: np.ndarray) -> str:
    lines = [f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, coords)]
    return f"{len(elements)}\n\n" + "\n".join(lines) + "\n"


def _libc_flush() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to flush (not on POSIX)
        pass


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout and stderr (RDKit's extended-Hückel code prints a warning per
    O-H / N-H distance it finds short)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, null = (os.dup(1), os.dup(2)), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        _libc_flush()  # C stdio buffers what it prints: flush it into /dev/null, not later
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def perceive(elements: Sequence[str], coords: np.ndarray):
    """(RDKit molecule with bonds, in the XYZ atom order; how: 0 = distance-based connectivity,
    1 = Hückel connectivity, 2 = Hückel connectivity with every bond single and no bond
    orders (when no valid bond orders exist: 2 of QM9's 130,831 molecules))."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from rdkit import rdBase

    block = xyz_block(elements, coords)
    _quiet_logs = rdBase.BlockLogs()  # noqa: F841  (RDKit's log messages, until it is released)
    for how, kw in enumerate(({}, {"useHueckel": True})):
        mol = Chem.MolFromXYZBlock(block)
        try:
            with _quiet_stdout() if how else contextlib.nullcontext():
                rdDetermineBonds.DetermineBonds(mol, charge=0, **kw)
            Chem.SanitizeMol(mol)
            return mol, how
        except Exception:  # RDKit raises ValueError or its own errors
            pass
    mol = Chem.MolFromXYZBlock(block)
    with _quiet_stdout():
        rdDetermineBonds.DetermineConnectivity(mol, useHueckel=True)
    mol.UpdatePropertyCache(strict=False)
    Chem.SanitizeMol(mol, Chem.SanitizeFlags.SANITIZE_SETHYBRIDIZATION, catchErrors=True)
    return mol, 2


def featurize(elements: Sequence[str], coords: np.ndarray) -> dict:
    """Graph arrays of one molecule: ``x`` [n, 11] float32, ``edge_index`` [2, E] int64
    (local atom indices, both directions of every bond), ``bond`` [E] int64 (index into
    BOND_TYPES), ``how`` (which perception succeeded)."""
    from rdkit.Chem.rdchem import HybridizationType as HT

    mol, how = perceive(elements, coords)
    n = mol.GetNumAtoms()
    if n != len(elements) or [a.GetSymbol() for a in mol.GetAtoms()] != list(elements):
        raise ValueError("RDKit changed the atoms of the XYZ block")  # never expected: a guard
    src: List[int] = []
    dst: List[int] = []
    kind: List[int] = []
    for b in mol.GetBonds():
        i, j, t = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), BOND_TYPES.index(str(b.GetBondType()))
        src += [i, j]
        dst += [j, i]
        kind += [t, t]
    order = np.lexsort((np.asarray(dst), np.asarray(src))) if src else np.zeros(0, dtype=np.int64)
    is_h = np.array([e == "H" for e in elements])
    x = np.zeros((n, 11), dtype=np.float32)
    for i, atom in enumerate(mol.GetAtoms()):
        hyb = atom.GetHybridization()
        x[i, ELEMENTS.index(elements[i])] = 1.0
        x[i, 5] = Z[elements[i]]
        x[i, 6] = float(atom.GetIsAromatic())
        x[i, 7:10] = [hyb == HT.SP, hyb == HT.SP2, hyb == HT.SP3]
        x[i, 10] = sum(1 for nb in atom.GetNeighbors() if is_h[nb.GetIdx()])
    edge_index = np.array([src, dst], dtype=np.int64).reshape(2, -1)[:, order]
    return {"x": x, "edge_index": edge_index, "bond": np.asarray(kind, dtype=np.int64)[order], "how": how}


def parse_elements(text: str) -> List[str]:
    """qm9pack's ``Elements`` column, e.g. "['C','H','H','H','H']"."""
    return [e.strip().strip("'\"") for e in text.strip("[] ").split(",")]


def parse_coords(text: str) -> np.ndarray:
    """qm9pack's ``XYZ_Ang`` column, e.g. "[[x,y,z],[x,y,z]]" -> [n, 3] float64."""
    vals = np.array([float(v) for v in text.replace("[", " ").replace("]", " ").replace(",", " ").split()])
    return vals.reshape(-1, 3)
