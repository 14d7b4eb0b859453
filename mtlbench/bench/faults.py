"""``python -m mtlbench bench faults``: a randomised SIGKILL campaign on tiny runs.

For each method (hard sharing, MTAN, UW, DWA, MGDA, AdaShare, Standley, TAG) one
uninterrupted reference run (a subprocess) counts the fault points it passes
(``MTLBENCH_FAULT_COUNTS``, see ``mtlbench.results.files``). Then ``--n`` trials, each in a
fresh results store: a method at random, the run killed with SIGKILL at a random point:
half of the time at the n-th pass of a random fault point (``write``: a temp file written,
not yet renamed; ``pt``: a checkpoint's .pt written, its sidecar not yet; ``save``; ``epoch``:
an epoch's log row written, its checkpoint not yet; ``eval``: inside an evaluation;
``record``: run.json written, the checkpoints not yet removed), else after a random delay;
a quarter of the trials are killed twice in a row. Then the same command resumes it and
the store is compared with the reference store, run folder by run folder (procedures'
child runs included): run.json and metrics.jsonl must be equal once the wall-clock fields
are dropped (``WALL_CLOCK``; Standley's trained / reused candidate lists record which
process trained a candidate, so their union is compared). Then ``--reports`` kills inside
``report`` writing (at a random ``write`` point or delay), a rerun, and the report compared
with an uninterrupted one (text outputs equal, images complete).

Printed: kills, resumes completed, exact matches, mismatches, duplicate and missing log
rows, corrupt files (a JSON / JSONL / YAML that does not parse, a truncated PNG / PDF),
temp files left, leftovers (a completed run with checkpoints/ or .lock), the headline last.
Each trial is two or three tiny runs (subprocesses, one CPU thread each); ``--n 48 --reports 4``
took 40 minutes on 2 cores shared with other jobs (load average ~16).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import yaml

SCENES = ["dataset=scenes", "dataset.n_train=48", "dataset.n_val=16", "dataset.n_test=16", "dataset.size=[32,32]",
          "backbone.width=8", "trainer.batch_size=8"]
TINY = ["dataset.limit=64", "trainer.batch_size=16", "trainer.eval_batch_size=64", "trainer.max_steps_per_epoch=3"]
METHODS: Dict[str, List[str]] = {
    "hard_sharing": ["method=hard_sharing", *TINY, "trainer.epochs=3"],
    "mtan": ["method=mtan", *TINY, "trainer.epochs=2"],
    "uw": ["method=uncertainty", *TINY, "trainer.epochs=2"],
    "dwa": ["method=dwa", *TINY, "trainer.epochs=3"],
    "mgda": ["method=mgda", *TINY, "trainer.epochs=2"],
    "adashare": ["method=adashare", *SCENES, "trainer.epochs=4", "trainer.max_steps_per_epoch=2",
                 "procedure.search=1.0", "procedure.warmup=0.25", "procedure.retrain=0.5"],
    "standley": ["method=standley", *TINY, "trainer.epochs=2"],
    "tag_grouping": ["method=tag_grouping", *TINY, "trainer.epochs=2", "procedure.every=2"],
}
EVENTS = ("write", "pt", "save", "epoch", "eval", "record")
WALL_CLOCK = {"wall_time_s", "train_time_s", "epoch_time_s", "started_at", "finished_at", "time_s",
              "candidate_train_time_s"}
PROVENANCE = {"trained", "reused"}  # Standley: which process trained a candidate (their union is compared)


def strip_wall(obj):
    """``obj`` without the wall-clock fields (recursively); Standley's trained / reused
    lists merged into one sorted list."""
    if isinstance(obj, dict):
        lists = {k for k in PROVENANCE & set(obj) if isinstance(obj[k], list)}
        out = {k: strip_wall(v) for k, v in obj.items() if k not in WALL_CLOCK | lists}
        if lists:
            out["candidates_run"] = sorted(x for k in lists for x in obj[k])
        return out
    if isinstance(obj, list):
        return [strip_wall(v) for v in obj]
    return obj


def snapshot(store: Path) -> Dict[str, dict]:
    """{run folder (relative): {"run": run.json, "rows": metrics.jsonl rows}}, wall-clock fields dropped."""
    out = {}
    for rj in sorted(Path(store).glob("*/*/*/run.json")):
        folder = rj.parent
        log = folder / "metrics.jsonl"
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
        out[str(folder.relative_to(store))] = {"run": strip_wall(json.loads(rj.read_text())), "rows": strip_wall(rows)}
    return out


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(k)) for k in ("phase", "candidate", "epoch", "cycle"))


def compare(ref: Dict[str, dict], got: Dict[str, dict]) -> Dict[str, int]:
    """mismatched run folders, duplicate and missing log rows of ``got`` vs ``ref``."""
    out = Counter(mismatches=0, duplicate_rows=0, missing_rows=0)
    for name in set(ref) | set(got):
        a, b = ref.get(name), got.get(name)
        if a is None or b is None or a != b:
            out["mismatches"] += 1
        want = Counter(row_key(r) for r in (a or {}).get("rows", []))
        have = Counter(row_key(r) for r in (b or {}).get("rows", []))
        out["duplicate_rows"] += sum((have - want).values())
        out["missing_rows"] += sum((want - have).values())
    return dict(out)


def _corrupt(p: Path) -> bool:
    try:
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".png":
            data = p.read_bytes()
            return not (data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-4] == b"\x00\x00\x00\x00IEND")
        elif p.suffix == ".pdf":
            data = p.read_bytes()
            return not (data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF"))
        return False
    except (ValueError, UnicodeDecodeError, yaml.YAMLError):
        return True


def check_files(root: Path) -> Dict[str, int]:
    """corrupt files, temp files left, leftovers of completed runs (checkpoints/, .lock)."""
    from mtlbench.results.files import is_temp_file

    files = [p for p in Path(root).rglob("*") if p.is_file() and ".sweeps" not in p.parts]
    done = [rj.parent for rj in Path(root).glob("*/*/*/run.json")]
    return {"corrupt_files": sum(_corrupt(p) for p in files if not is_temp_file(p)),
            "temp_files": sum(is_temp_file(p) for p in files),
            "leftovers": sum((f / "checkpoints").exists() or (f / ".lock").exists() for f in done)}


class Runner:
    """Subprocesses of this mtlbench (PYTHONPATH), one CPU thread each, a shared data cache."""

    def __init__(self, work: Path, data_root: Optional[str]):
        import mtlbench

        self.work = work
        root = str(Path(mtlbench.__file__).resolve().parents[1])
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                        PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        for k in ("MTLBENCH_KILL_AT", "MTLBENCH_FAULT_COUNTS"):
            self.env.pop(k, None)
        if data_root:
            self.env["MTLBENCH_DATA_ROOT"] = data_root

    def __call__(self, args: List[str], kill_at: Optional[str] = None, delay: Optional[float] = None,
                 counts: Optional[Path] = None, timeout: float = 600) -> tuple:
        """(exit code, killed?, seconds, the last line of stderr)."""
        env = dict(self.env)
        if kill_at:
            env["MTLBENCH_KILL_AT"] = kill_at
        if counts:
            env["MTLBENCH_FAULT_COUNTS"] = str(counts)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "mtlbench", *args], env=env, cwd=self.work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=delay if delay is not None else timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        last = (err or "").strip().splitlines()[-1:] or [""]
        return proc.returncode, proc.returncode == -9, time.perf_counter() - t0, last[0]


def run_args(method: str, store: Path, extra: List[str] = ()) -> List[str]:
    return ["run", *METHODS[method], "trainer.progress=false", f"results_dir={store}", *extra]


def pick_kill(rng: random.Random, counts: Dict[str, int], duration: float, scale: float = 1.0):
    """(kill_at spec, delay): a random fault point's random pass, or a random delay."""
    events = [e for e in EVENTS if counts.get(e, 0) > 0]
    if events and rng.random() < 0.5:
        e = rng.choice(events)
        return f"{e}:{rng.randint(1, max(1, int(counts[e] * scale)))}", None
    return None, rng.uniform(0.3, 1.0) * duration * scale


def trial(run: Runner, rng: random.Random, method: str, ref: dict, store: Path, twice: bool) -> dict:
    res = Counter(kills=0, resumes_completed=0, exact=0)
    extra = ["trainer.checkpoint_every_steps=2"] if rng.random() < 0.3 else []  # mid-epoch checkpoints too
    kills = [pick_kill(rng, ref["counts"], ref["seconds"])]
    if twice:
        kills.append(pick_kill(rng, ref["counts"], ref["seconds"], scale=0.5))
    points = []
    for kill_at, delay in kills:
        rc, killed, _, _ = run(run_args(method, store, extra), kill_at=kill_at, delay=delay)
        res["kills"] += killed
        points.append((kill_at or f"{delay:.1f}s") + ("" if killed else " (finished first: not killed)"))
        if not killed and rc != 0:
            res["errors"] += 1
    rc, _, _, err = run(run_args(method, store, extra))
    if rc != 0:
        res["errors"] += 1
        print(f"  resume failed ({method}, {points}): {err}", flush=True)
        return dict(res, **check_files(store))
    res["resumes_completed"] += 1
    diff = compare(ref["snapshot"], snapshot(store))
    res.update(diff, **check_files(store))
    res["exact"] += int(sum(diff.values()) == 0)
    if sum(diff.values()):
        print(f"  MISMATCH {method} killed at {points}: {diff}", flush=True)
    return dict(res, points=points)


def report_trials(run: Runner, rng: random.Random, stores: List[Path], work: Path, n: int) -> dict:
    """Kills inside ``report`` writing; the rerun's text outputs against an uninterrupted report."""
    merged = work / "report-store"
    for s in stores:
        for rj in s.glob("multimnist/*/*/run.json"):
            shutil.copytree(rj.parent, merged / rj.parent.relative_to(s), dirs_exist_ok=True)
    ref_dir, counts = work / "report-ref", work / "report-counts.json"
    args = ["report", "dataset=multimnist", f"results_dir={merged}", "n_resamples=199", "baseline=hard_sharing"]
    rc, _, seconds, err = run([*args, f"reports_dir={ref_dir}"], counts=counts)
    if rc != 0:
        raise RuntimeError(f"reference report failed: {err}")
    writes = json.loads(counts.read_text()).get("write", 1)
    # text outputs compared as written (the HTML table's random pandas Styler id aside)
    texts = lambda d: {p.name: re.sub(r"T_[0-9a-f]{5}", "T_", p.read_text()) for p in sorted(d.rglob("*"))  # noqa: E731
                       if p.suffix in (".md", ".csv", ".tex", ".html") and not p.name.startswith(".")}
    res = Counter()
    for _ in range(n):
        out = work / f"report-{rng.randrange(10**9)}"
        kill_at, delay = pick_kill(rng, {"write": writes}, seconds)
        _, killed, _, _ = run([*args, f"reports_dir={out}"], kill_at=kill_at, delay=delay)
        res["kills"] += killed
        rc, _, _, _ = run([*args, f"reports_dir={out}"])
        res["resumes_completed"] += rc == 0
        same = rc == 0 and texts(out) == texts(ref_dir)
        res["exact"] += same
        res["mismatches"] += not same
        res.update(check_files(out))
    return dict(res)


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m mtlbench bench faults", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8, help="kill trials over the runs (the campaign: --n 48)")
    p.add_argument("--reports", type=int, default=2, help="kill trials inside report writing")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="trials run side by side (each one CPU thread)")
    p.add_argument("--keep", default=None, help="keep the stores in this folder (default: a temp folder, removed)")
    a = p.parse_args(argv)
    if a.n < 0 or a.reports < 0:
        print("mtlbench: error: --n and --reports must be >= 0", file=sys.stderr)
        return 2
    work = Path(a.keep or tempfile.mkdtemp(prefix="mtlbench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    run, rng = Runner(work, os.environ.get("MTLBENCH_DATA_ROOT")), random.Random(a.seed)
    try:
        refs = {}
        for m in a.methods:
            store, counts = work / f"ref-{m}", work / f"counts-{m}.json"
            rc, _, seconds, err = run(run_args(m, store), counts=counts)
            if rc != 0:
                print(f"mtlbench: error: reference run of {m} failed: {err}", file=sys.stderr)
                return 2
            refs[m] = {"counts": json.loads(counts.read_text()), "seconds": seconds, "snapshot": snapshot(store)}
            print(f"reference {m}: {seconds:.1f}s, fault points {refs[m]['counts']}", flush=True)
        total = Counter()
        plans = [(i, a.methods[i % len(a.methods)] if i < len(a.methods) else rng.choice(a.methods),
                  random.Random(rng.randrange(2**32))) for i in range(a.n)]

        def one(plan):
            i, m, r = plan
            out = trial(run, r, m, refs[m], work / f"trial-{i}", twice=r.random() < 0.25)
            points = out.pop("points", [])
            print(f"trial {i + 1}/{a.n} {m} killed at {', '.join(points)}: {out}", flush=True)
            return out

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            for r in pool.map(one, plans):
                total.update(r)
        rep = report_trials(run, rng, [work / f"ref-{m}" for m in a.methods], work, a.reports) if a.reports else {}
        print(f"report writing: {rep}")
        return _summary(total, rep, a.n, a.reports)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def _summary(total: Counter, rep: dict, n: int, n_reports: int) -> int:
    keys = ("kills", "resumes_completed", "exact", "mismatches", "duplicate_rows", "missing_rows", "corrupt_files",
            "temp_files", "leftovers", "errors")
    runs = {k: total.get(k, 0) for k in keys}
    reps = {k: rep.get(k, 0) for k in keys}
    print("runs:    " + ", ".join(f"{k} {v}" for k, v in runs.items()))
    print("reports: " + ", ".join(f"{k} {v}" for k, v in reps.items()))
    bad = sum(runs[k] + reps[k] for k in keys[3:])
    print(f"faults: {runs['kills'] + reps['kills']} kills over {n} run trials and {n_reports} "
          f"report trials; resumes completed {runs['resumes_completed'] + reps['resumes_completed']}, exact "
          f"{runs['exact'] + reps['exact']}; mismatches {runs['mismatches'] + reps['mismatches']}, duplicate rows "
          f"{runs['duplicate_rows']}, missing rows {runs['missing_rows']}, corrupt files "
          f"{runs['corrupt_files'] + reps['corrupt_files']}, temp files left {runs['temp_files'] + reps['temp_files']}"
          f", leftovers {runs['leftovers']}, errors {runs['errors'] + reps['errors']}"
          f" -> {'OK' if bad == 0 else 'FAULTS FOUND'}")
    return 0 if bad == 0 else 1
