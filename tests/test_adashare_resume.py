"""AdaShare's search runs on the trainer's building blocks: the scheduler steps every search
cycle, the finite-loss check fires inside it, and a run killed mid-search (a real SIGKILL
after a search cycle's checkpoint) resumes there and ends exactly as an uninterrupted run."""
import json
import os
import subprocess
import sys


from mtlbench.methods.adashare.arch import AdaShare
from mtlbench.results.store import iter_runs

BUDGET = ["method=adashare", "dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16",
          "dataset.size=[32,32]", "backbone.width=8", "trainer.epochs=4", "trainer.batch_size=8",
          "trainer.max_steps_per_epoch=2", "procedure.search=1.0", "procedure.warmup=0.25",
          "procedure.retrain=0.5", "trainer.progress=false"]
TIMING = ("epoch_time_s",)


def rows_of(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_scheduler_steps_every_search_cycle(run_cli, results_dir):
    sched = "trainer.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    assert run_cli(*BUDGET, sched, "trainer.optimizer.lr=0.008") == 0
    (folder, rec), = list(iter_runs(results_dir))
    lrs = [r["lr"] for r in rows_of(folder) if r["phase"] == "search"]
    assert lrs == [0.008, 0.004, 0.002, 0.001]


def test_finite_loss_check_fires_inside_the_search(run_cli, results_dir, capsys, monkeypatch):
    real = AdaShare._forward_soft

    def poisoned(self, x, tasks):  # the search's soft-gated forward only
        preds, rep = real(self, x, tasks)
        return {t: p * float("nan") for t, p in preds.items()}, rep

    monkeypatch.setattr(AdaShare, "_forward_soft", poisoned)
    assert run_cli(*BUDGET) == 2
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "search cycle 1" in err and "at step 1" in err


def test_killed_mid_search_resumes_and_ends_as_an_uninterrupted_run(tmp_path, data_root, run_cli):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # saves: warm-up epoch 1, warm-up done, search cycle 1, search cycle 2 -> killed after the 4th
    env = dict(os.environ, OMP_NUM_THREADS="1", MTLBENCH_KILL_AT="save:4")
    proc = subprocess.run([sys.executable, "-m", "mtlbench", "run", *BUDGET, f"results_dir={killed}",
                           f"data_root={data_root}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (folder,) = [p.parent for p in killed.glob("*/*/*/config.yaml")]
    meta = json.loads((folder / "checkpoints" / "search.json").read_text())
    assert meta["epoch"] == 2 and not meta["done"]
    assert [r["phase"] for r in rows_of(folder)] == ["warmup", "search", "search"]

    assert run_cli(*BUDGET, f"results_dir={killed}") == 0
    assert run_cli(*BUDGET, f"results_dir={clean}") == 0
    (f1, r1), = list(iter_runs(killed))
    (f2, r2), = list(iter_runs(clean))
    assert r1["run_id"] == r2["run_id"] and r1["metrics"] == r2["metrics"] and r1["losses"] == r2["losses"]
    assert r1["procedure_info"]["policy"] == r2["procedure_info"]["policy"]
    assert rows_of(f1) == rows_of(f2)  # every phase logged once, the same values
