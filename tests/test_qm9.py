"""QM9: hand-checked molecular graphs, atomization energies, target units, the LibMTL split,
the PyG reader, a tiny end-to-end run and the report with the published rows.

Molecules and QM9 values below are copied from the qm9pack CSVs (QM9 index 1 = methane,
3 = water, 214 = benzene); the expected features and energies are worked out by hand."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("torch_geometric")

from mtlbench.core.data import DataError  # noqa: E402
from mtlbench.loaders import molecules as mol  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HA_MEV = 27.211386246 * 1000  # 1 Hartree in meV (PyG's HAR2EV)

METHANE = (["C", "H", "H", "H", "H"], [[-0.0126981359, 1.0858041578, 0.0080009958],
                                       [0.002150416, -0.0060313176, 0.0019761204],
                                       [1.0117308433, 1.4637511618, 0.0002765748],
                                       [-0.540815069, 1.4475266138, -0.8766437152],
                                       [-0.5238136345, 1.4379326443, 0.9063972942]])
WATER = (["O", "H", "H"], [[-0.0343604951, 0.9775395708, 0.0076015923], [0.0647664923, 0.0205721989, 0.0015346341],
                           [0.8717903737, 1.3007924048, 0.0006931336]])
BENZENE = (["C"] * 6 + ["H"] * 6, [
    [-0.0263621144, 1.3835086344, 0.0103870267], [1.1708019283, 2.0965810056, 0.0023045827],
    [2.3868915311, 1.4163752988, -0.0131380362], [2.4057296503, 0.0230978461, -0.0205116117],
    [1.2085609122, -0.6899726756, -0.0124063764], [-0.0075247651, -0.0097718365, 0.0030452239],
    [-0.9733414726, 1.9132329519, 0.0224498095], [1.1560436477, 3.1816075197, 0.0080224004],
    [3.3191394577, 1.9717268815, -0.0194567412], [3.3527113702, -0.5066219591, -0.0325112361],
    [1.223326423, -1.7750001478, -0.0181456652], [-0.9397757183, -0.565118069, 0.0093265237]])


def _graph(m):
    return mol.featurize(m[0], np.array(m[1]))


def _bonds(g):
    """{(i, j): bond type name} over both directions."""
    return {(int(i), int(j)): mol.BOND_TYPES[int(t)] for (i, j), t in zip(g["edge_index"].T, g["bond"])}


def test_methane_water_benzene_features():
    g = _graph(METHANE)  # C bonded to 4 H: sp3, 4 Hs, single bonds, nothing aromatic
    assert g["x"].shape == (5, 11) and g["how"] == 0
    assert g["x"][0].tolist() == [0, 1, 0, 0, 0, 6, 0, 0, 0, 1, 4]
    assert all(g["x"][k].tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0] for k in range(1, 5))
    assert _bonds(g) == {**{(0, k): "SINGLE" for k in range(1, 5)}, **{(k, 0): "SINGLE" for k in range(1, 5)}}
    g = _graph(WATER)  # O with 2 H: sp3, 2 Hs
    assert g["x"][0].tolist() == [0, 0, 0, 1, 0, 8, 0, 0, 0, 1, 2]
    assert _bonds(g) == {(0, 1): "SINGLE", (1, 0): "SINGLE", (0, 2): "SINGLE", (2, 0): "SINGLE"}
    g = _graph(BENZENE)  # the XYZ order kept: 6 aromatic sp2 C (1 H each) in a ring, then 6 H
    assert g["x"].shape == (12, 11) and g["x"][:, :5].argmax(1).tolist() == [1] * 6 + [0] * 6
    assert all(g["x"][k].tolist() == [0, 1, 0, 0, 0, 6, 1, 0, 1, 0, 1] for k in range(6))
    assert all(g["x"][k, 6] == 0 for k in range(6, 12))
    b = _bonds(g)
    ring = {(k, (k + 1) % 6) for k in range(6)}
    assert {e for e, t in b.items() if t == "AROMATIC"} == ring | {(j, i) for i, j in ring}
    assert {(i, j) for (i, j), t in b.items() if t == "SINGLE" and i < 6} == {(k, k + 6) for k in range(6)}
    assert len(b) == 24  # 12 bonds, both directions


def test_atomization_energy_of_methane_and_atom_refs():
    # U0(CH4) = -40.47893 Ha; refs C -37.846772, H -0.500273: -40.47893 + 37.846772 + 4 * 0.500273 = -0.631066 Ha
    assert mol.atomization_hartree(-40.47893, METHANE[0], "U0") == pytest.approx(-0.631066, abs=1e-9)
    from torch_geometric.datasets.qm9 import HAR2EV, atomrefs  # PyG's table, in eV

    for k, kind in zip((7, 8, 9, 10), ("U0", "U", "H", "G")):
        ours = [mol.ATOM_REFS_HARTREE[kind][e] * HAR2EV for e in mol.ELEMENTS]
        assert ours == pytest.approx(atomrefs[k], abs=HAR2EV * 1e-6)  # equal to the 1e-6 Ha QM9 prints


def test_unit_conversion_of_every_target():
    row = {"Dipole_debye": 0.0, "Polarizability_bohr3": 13.21, "HOMO_au": -0.3877, "LUMO_au": 0.1171,
           "R2_bohr2": 35.3641, "ZPVE_au": 0.044749, "InternalEnergy_0K_au": -40.47893,
           "InternalEnergy_298K_au": -40.476062, "Enthalphy_298K_au": -40.475117,
           "GibbsFreeEnergy_298K_au": -40.498597, "Heatcapacity_Cv_cal_mol_K": 6.469}  # methane
    h = 4  # hydrogens of CH4
    expected = {"mu": 0.0, "alpha": 13.21, "homo": -0.3877 * HA_MEV, "lumo": 0.1171 * HA_MEV, "r2": 35.3641,
                "zpve": 0.044749 * HA_MEV,
                "U0": (-40.47893 + 37.846772 + h * 0.500273) * HA_MEV,
                "U": (-40.476062 + 37.845355 + h * 0.498857) * HA_MEV,
                "H": (-40.475117 + 37.844411 + h * 0.497912) * HA_MEV,
                "G": (-40.498597 + 37.861317 + h * 0.510927) * HA_MEV, "cv": 6.469}
    got = mol.target_values(row, METHANE[0])
    assert list(got) == ["mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv"]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got["U0"] == pytest.approx(-17172.18, abs=0.01)  # -0.631066 Ha x 27211.386 meV/Ha
    assert {t: u for t, (_, _, u, _) in mol.TARGETS.items()}["homo"] == "meV"


@pytest.fixture(scope="module")
def libmtl_data():
    if not (SHARED / "qm9_libmtl_split").is_dir():
        pytest.skip("../shared/data/qm9_libmtl_split absent")
    from mtlbench.engine.context import build_data

    path = SHARED / "qm9_libmtl_split" / "random_split.t"
    return build_data({"name": "qm9", "split_file": str(path), "limit": 6, "n_train": None}), path


def test_libmtl_split_reproduced(libmtl_data):
    data, path = libmtl_data
    perm = torch.load(path, weights_only=True).tolist()  # LibMTL: test = [:10000], val = [10000:20000], train = rest
    ids = {k: s.sample_ids() for k, s in data.splits.items()}
    assert ids == {"test": perm[:6], "val": perm[10000:10006], "train": perm[20000:20006]}
    assert data.input_shape == (11, 4) and [t.name for t in data.tasks][6] == "U0"
    mae = data.tasks[6].metrics()[0]
    assert mae.name == "mae" and not mae.higher_is_better


def test_task_subset_and_protocol_presets(libmtl_data):
    data, _ = libmtl_data
    sub = data.select_tasks(["U0", "mu"])
    assert list(next(iter(sub.splits["train"].batches(4))).targets) == ["U0", "mu"]
    from mtlbench.engine.configs import compose

    cpu, paper = compose(["dataset=qm9"]), compose(["dataset=qm9", "+protocol=qm9_paper"])
    assert (cpu["backbone"]["name"], cpu["backbone"]["edges"], cpu["dataset"]["n_train"]) == ("mpnn", "bond", 2000)
    assert paper["backbone"]["edges"] == "complete" and paper["backbone"]["width"] == 64
    assert (paper["trainer"]["epochs"], paper["trainer"]["batch_size"], paper["dataset"]["n_train"]) == (300, 120, None)
    assert paper["trainer"]["scheduler"]["_target_"].endswith("ReduceLROnPlateau")


def test_bad_split_file_and_missing_extra_are_one_line(tmp_path, monkeypatch):
    from mtlbench.engine.context import build_data

    torch.save(torch.arange(10), tmp_path / "short.t")
    with pytest.raises(DataError, match="not a permutation of the 130831"):
        build_data({"name": "qm9", "split_file": str(tmp_path / "short.t"), "limit": 2})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "rdkit" else real(n, *a))
    with pytest.raises(DataError) as err:
        build_data({"name": "qm9", "limit": 2})
    assert "\n" not in str(err.value) and "rdkit" in str(err.value) and "[qm9]" in str(err.value)


def test_pyg_root_is_read_as_pyg_processed_it(tmp_path):
    """A PyG QM9 root written by PyG's own InMemoryDataset.save: graphs and targets come back,
    energies converted eV -> meV."""
    from torch_geometric.data import Data, InMemoryDataset

    from mtlbench.datasets.qm9 import PYG_FILE, pyg_arrays

    data = []
    for k, m in enumerate((METHANE, WATER)):
        g = _graph(m)
        y = torch.arange(19, dtype=torch.float).view(1, 19) + k
        data.append(Data(x=torch.tensor(g["x"]), pos=torch.tensor(m[1]), edge_index=torch.tensor(g["edge_index"]),
                         edge_attr=torch.nn.functional.one_hot(torch.tensor(g["bond"]), 4).float(), y=y))
    (tmp_path / PYG_FILE).parent.mkdir(parents=True)
    InMemoryDataset.save(data, str(tmp_path / PYG_FILE))
    a = pyg_arrays(tmp_path)
    assert a["node_ptr"].tolist() == [0, 5, 8] and a["edge_ptr"].tolist() == [0, 8, 12]
    assert a["edge_index"][:, 8:].tolist() == _graph(WATER)["edge_index"].tolist()  # local indices per molecule
    # PyG targets 0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11; homo, lumo, zpve, U0..G x 1000 (eV -> meV)
    assert a["y"][1].tolist() == [1, 2, 3000, 4000, 6, 7000, 13000, 14000, 15000, 16000, 12]


@pytest.fixture(scope="module")
def qm9_runs(make_run_cli, tmp_path_factory):
    results = tmp_path_factory.mktemp("qm9_results")
    run = make_run_cli(results)
    for method in ("hard_sharing", "stl", "mgda"):  # mgda: a balancer on the graph readout's representation
        assert run("dataset=qm9", f"method={method}", "dataset.limit=16", "backbone.width=8", "backbone.edge_hidden=8") == 0
    return results


def test_tiny_end_to_end_run_reports_eleven_maes(qm9_runs):
    (rec,) = [json.loads(p.read_text()) for p in (qm9_runs / "qm9" / "hard_sharing").glob("*/run.json")]
    maes = rec["metrics"]["test"]
    assert list(maes) == list(mol.TARGETS) and all(list(v) == ["mae"] for v in maes.values())
    assert all(np.isfinite(v["mae"]) and v["mae"] > 0 for v in maes.values())
    assert rec["flops"]["total"] > 0 and rec["data_sizes"] == {"test": 16, "val": 16, "train": 16}
    (rec,) = [json.loads(p.read_text()) for p in (qm9_runs / "qm9" / "mgda").glob("*/run.json")]
    assert rec["balancer"] == "mgda" and list(rec["metrics"]["test"]) == list(mol.TARGETS)
    assert all(np.isfinite(v["mae"]) for v in rec["metrics"]["test"].values())


def test_report_shows_published_rows(qm9_runs, tmp_path):
    import mtlbench.cli

    reports = tmp_path / "reports"
    assert mtlbench.cli.main(["report", "dataset=qm9", "published=nash_mtl_qm9", f"results_dir={qm9_runs}",
                              f"reports_dir={reports}", "plots=false", "delta=delta_m", "n_resamples=99"]) == 0
    table = (reports / "qm9" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| STL (published)"))
    assert "| pub |" in row and "60.58" in row and "0.0671" in row and "+0.00" in row  # Δ_m of STL vs itself
    assert "vs published/Δ_m paper (%)" in table and "AvivNavon/nash-mtl" in table
    assert mtlbench.cli.main(["report", "dataset=qm9", "published=no_such_table", f"results_dir={qm9_runs}",
                              f"reports_dir={reports}"]) == 2
