"""Long runs are not silent: off a terminal a plain progress line (step, loss, samples/s, ETA)
every ``trainer.progress_every`` seconds; the run folder keeps log.txt and history.csv
(logger=csv), or TensorBoard event files (logger=tensorboard); ``mtlbench.load_history``;
run.json records the budget that ran and the report's protocol line states it."""
import json

import pytest

import mtlbench
from mtlbench.engine.progress import Progress


def test_plain_lines_off_a_terminal_and_in_log_txt(run_cli, results_dir, capsys):
    # 64 samples / batch 16 = 4 steps per epoch, although the cap is 20 (the case)
    assert run_cli("trainer.progress=auto", "trainer.progress_every=0", "trainer.max_steps_per_epoch=20",
                   "trainer.epochs=2") == 0
    out = capsys.readouterr().out  # pytest's capture is no terminal: lines, no bar
    lines = [x for x in out.splitlines() if "epoch 1/2: step" in x]
    assert len(lines) == 4 and lines[-1].startswith("[mtlbench] epoch 1/2: step 4/4 (100%) | loss left=")
    assert "samples/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
    (folder,) = [p.parent for p in results_dir.rglob("run.json")]
    log = (folder / "log.txt").read_text()
    assert "epoch 2/2: step 4/4" in log and "test: left.accuracy=" in log and "epoch 1: train loss" in log
    rec = json.loads((folder / "run.json").read_text())
    assert rec["budget"] == {"max_steps_per_epoch": 20, "steps_per_epoch": [4, 4], "samples_seen": 128}
    hist = mtlbench.load_history(results_dir)
    assert list(hist["epoch"]) == [1, 2] and list(hist["steps"]) == [4, 4]
    assert {"train_loss/left", "val/right/accuracy", "lr", "method", "run_id"} <= set(hist.columns)
    assert (folder / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss/left")
    # the report states what ran, not the cap
    assert mtlbench.cli.main(["report", f"results_dir={results_dir}", f"reports_dir={results_dir.parent / 'rep'}",
                              "dataset=multimnist", "plots=false", "format=[md]"]) == 0
    summary = (results_dir.parent / "rep" / "multimnist" / "summary.md").read_text()
    assert "steps/epoch 4 (cap 20)" in summary and "samples seen 128" in summary


def test_tensorboard_logger_writes_readable_events(run_cli, results_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_cli("logger=tensorboard") == 0
    (events,) = results_dir.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"train_loss/left", "val/right/accuracy", "lr"} <= set(acc.Tags()["scalars"])
    (ev,) = acc.Scalars("train_loss/left")
    assert ev.step == 1 and ev.value > 0


def test_progress_line_format():
    got = []
    p = Progress(10, "epoch 1/3", mode="lines", every=0.0, out=got.append)
    p.update(4, samples=64, stats=lambda: {"left": 0.53125})
    assert got[-1].startswith("[mtlbench] epoch 1/3: step 4/10 (40%) | loss left=0.5312 | ")
    assert " samples/s | ETA " in got[-1]
    silent = []
    Progress(10, mode=False, every=0.0, out=silent.append, sink=silent.append).update(1)
    assert len(silent) == 1 and not silent[0].startswith("[mtlbench]")  # the log gets it, not stdout
