"""The store of published tables: every value read back exactly as its file writes it (and as
the source prints it, spot-checked against the source documents), converted only by the
declared factor; unknown keys are one line."""
import pytest
import yaml

from mtlbench.results import published


@pytest.mark.parametrize("key", published.available())
def test_values_are_read_unchanged_from_their_file(key):
    raw = yaml.safe_load((published.STORE / f"{key}.yaml").read_text())
    table = published.load(key)
    assert table.key == key and table.source and table.protocol
    assert [r.label for r in table.rows] == [str(r["label"]) for r in raw["rows"]]
    for row, raw_row in zip(table.rows, raw["rows"]):
        assert row.raw == [float(v) for v in raw_row["values"]]
        for (label, k, factor), v in zip(table.columns, row.raw):
            assert row.values[k] == v * factor


def test_spot_checks_against_the_sources():
    """Cells read off the source documents by hand (PDF page 2 of each LibMTL document; the
    BASE array of nash-mtl's experiments/quantum_chemistry/utils.py)."""
    hps = {r.label: r for r in published.load("libmtl_nyuv2_hps").rows}
    assert hps["EW"].raw == [54.10, 75.78, 0.3771, 0.1596, 23.53, 17.20, 34.55, 60.75, 72.06]
    assert hps["EW"].values[("seg", "miou")] == pytest.approx(0.5410)  # printed in %
    seg = {r.label: r for r in published.load("libmtl_nyuv2_segnet_mtan").rows}
    assert seg["Nash-MTL (reported in [9, 11])"].raw[:2] == [40.13, 65.93]
    assert seg["DWA (LibMTL)"].methods == ["mtan", "mtan+dwa"]
    (stl,) = published.load("nash_mtl_qm9").rows
    assert stl.methods == ["stl"] and stl.values[("homo", "mae")] == 60.576 and stl.raw[-1] == 0.07212


def test_unknown_key_is_one_line():
    with pytest.raises(ValueError) as err:
        published.load("nash_mtl_qm99")
    assert "\n" not in str(err.value) and "nash_mtl_qm9" in str(err.value)
