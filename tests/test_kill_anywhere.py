"""Kill anywhere, resume, and get exactly the uninterrupted run (issue 21, items 1-4).

Real subprocesses SIGKILL themselves at points this test chooses (``MTLBENCH_KILL_AT``,
see ``mtlbench.results.files.fault_point``): between a checkpoint's .pt and its sidecar,
at an epoch boundary (the epoch's log row written, its checkpoint not yet), inside an
evaluation, and twice in a row. Each run is then resumed (the same command, in-process)
and its run.json and metrics.jsonl, and those of every child run, are compared with an
uninterrupted run's: equal once the wall-clock fields (``bench.faults.WALL_CLOCK``) are
dropped. Covered: hard sharing, one gradient balancer (MGDA), AdaShare (warm-up / search /
retrain phases) and one grouping procedure (TAG: affinity phase, then one fit per group).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlbench.bench.faults import check_files, snapshot

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset.limit=64", "trainer.batch_size=16", "trainer.eval_batch_size=64", "trainer.max_steps_per_epoch=3",
        "trainer.progress=false"]
RUNS = {
    "hard_sharing": ["method=hard_sharing", *TINY, "trainer.epochs=3", "trainer.checkpoint_every_steps=3"],
    "mgda": ["method=mgda", *TINY, "trainer.epochs=2"],
    "adashare": ["method=adashare", "dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16",
                 "dataset.size=[32,32]", "backbone.width=8", "trainer.epochs=4", "trainer.batch_size=8",
                 "trainer.max_steps_per_epoch=2", "procedure.search=1.0", "procedure.warmup=0.25",
                 "procedure.retrain=0.5", "trainer.progress=false"],
    "tag_grouping": ["method=tag_grouping", *TINY, "trainer.epochs=2", "procedure.every=2"],
}
# the kill points, in order (a second entry: killed again while resuming)
KILLS = {
    "hard_sharing": ["pt:2", "eval:2"],  # the .pt of epoch 1's end written, its sidecar not; then in epoch 2's val
    "mgda": ["epoch:2"],                  # epoch 2's row logged, its end-of-epoch checkpoint not written
    "adashare": ["epoch:3"],              # search cycle 2's row logged (warm-up 1 epoch, then cycles)
    "tag_grouping": ["epoch:2", "pt:2"],  # affinity epoch 2 logged; then the affinity phase's final .pt
}


def _spawn(method, store, kill_at):
    env = dict(os.environ, OMP_NUM_THREADS="1", MTLBENCH_KILL_AT=kill_at)
    return subprocess.Popen([sys.executable, "-m", "mtlbench", "run", "profile=tiny", *RUNS[method],
                             f"results_dir={store}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_round(stores, round_):
    procs = {m: _spawn(m, stores[m], kills[round_]) for m, kills in KILLS.items() if len(kills) > round_}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == -9, f"{m} was not killed at {KILLS[m][round_]}: {err[-1500:]}"


def _only(store, method):
    (folder,) = [p.parent for p in store.glob(f"*/{method}/*/config.yaml")]
    return folder


@pytest.fixture(scope="module")
def stores(tmp_path_factory, make_run_cli):
    """The killed stores, resumed, and the uninterrupted ones (run while the kills run)."""
    base = tmp_path_factory.mktemp("kill_anywhere")
    killed = {m: base / f"killed-{m}" for m in RUNS}
    procs = {m: _spawn(m, killed[m], KILLS[m][0]) for m in RUNS}
    clean = {m: base / f"clean-{m}" for m in RUNS}
    for m in RUNS:
        assert make_run_cli(clean[m])(*RUNS[m]) == 0
    states = {}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == -9, f"{m} was not killed at {KILLS[m][0]}: {err[-1500:]}"
        states[m] = _state(killed[m], m)
    _kill_round(killed, 1)
    for m in RUNS:
        assert make_run_cli(killed[m])(*RUNS[m]) == 0
    return killed, clean, states


def _state(store, method):
    folder = _only(store, method)
    ckpt = folder / "checkpoints"
    metas = {p.stem: json.loads(p.read_text()) for p in ckpt.glob("*.json")}
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"metas": metas, "pts": sorted(p.name for p in ckpt.glob("*.pt")), "rows": rows}


@pytest.mark.parametrize("method", list(RUNS))
def test_resumed_run_equals_the_uninterrupted_one(stores, method):
    killed, clean, _ = stores
    got, ref = snapshot(killed[method]), snapshot(clean[method])
    assert set(got) == set(ref) and len(ref) >= 1
    for name in ref:
        assert got[name]["run"] == ref[name]["run"], name
        assert got[name]["rows"] == ref[name]["rows"], name  # every row once, same values
    assert check_files(killed[method]) == {"corrupt_files": 0, "temp_files": 0, "leftovers": 0}


def test_kill_between_pt_and_sidecar_keeps_the_log_consistent(stores):
    """Item 4 (and 2): the sidecar still names the checkpoint at epoch 1's last step (a
    mid-epoch cursor, ``checkpoint_every_steps`` = steps per epoch), not the orphan .pt of
    the epoch's end, so the resume cuts the log before epoch 1's row, takes no extra
    training step, validates and logs epoch 1 once (the comparison above)."""
    st = stores[2]["hard_sharing"]
    fit = st["metas"]["fit"]
    assert (fit["epoch"], fit["step"]) == (0, 3) and fit["log_bytes"] == 0
    assert fit["file"] in st["pts"] and len(st["pts"]) == 2  # the orphan is removed on resume
    assert [r["epoch"] for r in st["rows"]] == [1]


def test_kill_at_an_epoch_boundary_resumes_from_the_end_of_epoch_checkpoint(stores):
    """Item 1: default settings (no mid-epoch checkpoints), killed after epoch 2's row was
    logged and before its checkpoint: the resume starts from the end-of-epoch-1
    checkpoint (data order and RNG states restored) and ends exactly as the clean run."""
    st = stores[2]["mgda"]
    assert (st["metas"]["fit"]["epoch"], st["metas"]["fit"]["step"]) == (1, 0)
    assert [r["epoch"] for r in st["rows"]] == [1, 2]


def test_multi_phase_kills_leave_each_phase_logged_once(stores):
    """Item 3: AdaShare killed in the search, TAG in the affinity phase: the phases finished
    before are replayed from their checkpoints, never logged twice (compared above)."""
    ada, tag = stores[2]["adashare"], stores[2]["tag_grouping"]
    assert ada["metas"]["warmup"]["done"] and ada["metas"]["search"]["epoch"] == 1
    assert [r["phase"] for r in ada["rows"]] == ["warmup", "search", "search"]
    assert tag["metas"]["affinity"]["epoch"] == 1 and [r["epoch"] for r in tag["rows"]] == [1, 2]
