"""trainer.selection=last_k_mean: the test (and val) metrics of the last k epochs averaged
(the MTAN / Nash-MTL / FAMO protocol), recorded in run.json and in the report's protocol."""
import json

import pytest

from mtlbench.engine.trainer import Trainer
from mtlbench.results.protocol import protocol_of
from mtlbench.results.store import iter_runs


def test_last_k_mean_averages_the_last_k_epochs_test_metrics(run_cli, results_dir):
    assert run_cli("trainer.epochs=3", "trainer.selection=last_k_mean", "trainer.selection_k=2") == 0
    (folder, rec), = list(iter_runs(results_dir))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [("test" in r) for r in rows] == [False, True, True]  # test read only in the last k epochs
    assert rec["selection"] == {"mode": "last_k_mean", "epoch": 3, "k": 2, "epochs": [2, 3]}
    for task, metrics in rec["metrics"]["test"].items():
        for m, v in metrics.items():
            assert v == pytest.approx((rows[1]["test"][task][m] + rows[2]["test"][task][m]) / 2)
        assert rec["losses"]["test"][task] == pytest.approx((rows[1]["test_loss"][task] + rows[2]["test_loss"][task]) / 2)
        assert rec["metrics"]["val"][task] == pytest.approx(
            {m: (rows[1]["val"][task][m] + rows[2]["val"][task][m]) / 2 for m in rows[1]["val"][task]})
    assert protocol_of(rec, {"trainer": {"selection": "last_k_mean"}})["selection"] == "last_k_mean (k=2)"


def test_selection_k_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="trainer.selection_k must be a positive integer"):
        Trainer(selection="last_k_mean", selection_k=0)
