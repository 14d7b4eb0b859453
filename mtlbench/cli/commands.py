"""Command line: ``python -m mtlbench {run,report,list,bench,group,data,clean} [key=value ...]``.

One style for every command (``mtlbench/cli/kv.py``): Hydra-style ``key=value`` overrides,
``--help``, ``--cfg job``, ``-m`` where a sweep makes sense, flags before or after the
overrides. Hydra owns argv for ``run`` (so ``-m`` sweeps and launchers work); this
dispatcher pops the subcommand first. Known errors become one line on stderr (exit 2),
never a traceback from deep inside.

Nothing heavy is imported at module level: ``list`` and ``--help`` answer without torch.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

USAGE = """usage: python -m mtlbench <command> [key=value ...] [--help] [--cfg job] [-m]

commands:
  run      train and evaluate: python -m mtlbench run method=stl dataset=multimnist seed=1
           sweeps: python -m mtlbench run -m method=stl,hard_sharing seed=0,1,2 profile=tiny
  report   summarise a dataset's runs: python -m mtlbench report dataset=multimnist [baseline=stl]
  list     what is registered (archs, balancers, procedures, backbones, datasets) and the presets
  bench    benchmarks: python -m mtlbench bench {overhead,archs,grouping,tabular,adashare,throughput,affinity}
  group    select task groups from a score table: python -m mtlbench group scores=FILE.csv budget=2
  data     get a dataset: python -m mtlbench data nyuv2 | data check nyuv2 root=DIR | data list
  clean    remove failed / unfinished runs: python -m mtlbench clean [--failed] [--dry-run]

Every command takes --help (its keys) and --cfg job (its resolved config, nothing runs).
"""

CONFIG_GROUPS = ("method", "dataset", "arch", "balancer", "procedure", "backbone", "profile", "trainer", "logger")

_failures: List[str] = []


def known_errors() -> tuple:
    """The errors that become one line (OSError: disk full, permissions, unreadable files)."""
    from mtlbench.core.data import DataError
    from mtlbench.core.registry import RegistryError
    from mtlbench.engine.checkpoint import CheckpointError
    from mtlbench.engine.trainer import TrainingError
    from mtlbench.results.store import StoreError

    return (RegistryError, DataError, StoreError, TrainingError, CheckpointError, ValueError, TypeError, OSError)


def fail(msg: str) -> int:
    """Print one line on stderr (set MTLBENCH_DEBUG=1 to get tracebacks instead)."""
    print(f"mtlbench: error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)
    return 2


def config_options(group: str) -> List[str]:
    """Valid values of a config group: the registry's names for arch / balancer / procedure /
    backbone / dataset (with their YAML, or a default node for a plugin without one), the
    YAML files for the others (method presets, profiles...)."""
    from mtlbench.engine.configs import options

    return options(group)


def check_group_overrides(args: List[str]) -> Optional[str]:
    """One-line message for ``group=value`` naming an option that does not exist."""
    if any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in args):
        return None
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in CONFIG_GROUPS or any(ch in value for ch in "()[]*$"):
            continue
        known = config_options(key)
        for v in value.split(","):
            if not v:
                return f"{key}= needs a value; known {key}s: {', '.join(known)}"
            if v not in known:
                return f"unknown {key} '{v}'; known {key}s: {', '.join(known)}"
    return None


_app = None


def _hydra_app():
    """The Hydra application of ``run`` (built on first use: importing hydra.main is not free)."""
    global _app
    if _app is None:
        import hydra

        _app = hydra.main(config_path="pkg://mtlbench.conf", config_name="config", version_base=None)(_hydra_job)
    return _app


def _hydra_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from mtlbench.engine.configs import set_searchpath
    from mtlbench.engine.run import execute

    hc = HydraConfig.get()
    set_searchpath(list(hc.searchpath or []))  # child runs compose with the same search path
    files = {"overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))),
             "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}))}
    total = os.environ.get("MTLBENCH_SWEEP_JOBS")
    if hc.mode == RunMode.MULTIRUN and total:
        print(f"[mtlbench] job {hc.job.num + 1}/{total}: {' '.join(hc.overrides.task)}", flush=True)
    try:
        execute(cfg, hydra_files=files)
    except known_errors() as exc:
        if os.environ.get("MTLBENCH_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if hc.mode == RunMode.MULTIRUN:  # keep the sweep going; report at the end
            _failures.append(msg)
            if os.environ.get("MTLBENCH_FAILURES"):  # jobs in launcher worker processes
                with open(os.environ["MTLBENCH_FAILURES"], "a") as f:
                    f.write(msg.replace("\n", " ") + "\n")
            fail(f"{msg} (job {hc.job.num}; sweep continues)")
            return
        raise SystemExit(fail(msg))


def run_cli(args: List[str]) -> int:
    from mtlbench.cli import runchecks

    if any(a in ("-h", "--help") for a in args):
        print(runchecks.run_help())
        return 0
    flags, overrides = runchecks.split_flags(args)
    if any(f in ("-m", "--multirun") for f in flags) and any(f in ("--cfg", "-c", "--info", "-i") for f in flags):
        return fail("run: --cfg/--info show one job's config and cannot be combined with -m: drop -m and give "
                    "one value per key (e.g. method=stl)")
    msg = (runchecks.check_launcher(overrides) or check_group_overrides(overrides)
           or runchecks.check_sweep_store(overrides, any(f in ("-m", "--multirun") for f in flags)))
    if msg:
        return fail(msg)
    try:
        jobs = runchecks.check_sweeps(overrides, multirun=any(f in ("-m", "--multirun") for f in flags))
        extra = runchecks.overlay_overrides(overrides)
    except ValueError as exc:
        return fail(str(exc))
    msg = runchecks.check_additions(overrides) or (runchecks.precompose(overrides + extra) if not flags else None)
    if msg:
        return fail(msg)
    _failures.clear()
    import tempfile

    from mtlbench.engine.configs import register_defaults, searchpath_of, set_searchpath

    try:
        set_searchpath(searchpath_of(overrides))
    except Exception:  # an unparsable override: Hydra reports it below
        set_searchpath([])
    register_defaults()  # registered plugins without a YAML compose with their defaults

    fd, failures_file = tempfile.mkstemp(prefix="mtlbench-failures-", suffix=".txt")
    os.close(fd)
    os.environ["MTLBENCH_FAILURES"] = failures_file
    os.environ["MTLBENCH_SWEEP_JOBS"] = str(jobs)
    # launcher workers (joblib's reused processes, SLURM jobs) get it through Hydra
    env_override = f"++hydra.job.env_set.MTLBENCH_FAILURES={failures_file}"
    jobs_override = [f"++hydra.job.env_set.MTLBENCH_SWEEP_JOBS={jobs}"] if jobs > 1 else []
    saved = sys.argv
    sys.argv = ["mtlbench run", *flags, *overrides, *extra, env_override, *jobs_override]  # Hydra: flags first
    try:
        _hydra_app()()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else fail(exc.code)
    finally:
        sys.argv = saved
        set_searchpath([])
        os.environ.pop("MTLBENCH_FAILURES", None)
        os.environ.pop("MTLBENCH_SWEEP_JOBS", None)
        with open(failures_file) as f:
            failed = len(f.read().splitlines())
        os.unlink(failures_file)
    if failed or _failures:
        return fail(f"{max(failed, len(_failures))} job(s) of the sweep failed (see above)")
    return 0


def command_config(command: str, args: List[str], example: str, missing: Optional[str] = None):
    """The plain config of a key=value command (``mtlbench/conf/<command>.yaml`` with ``args``
    applied, Hydra's override grammar) and None, or None and a one-line message naming the fix."""
    from mtlbench.cli import kv

    bad = [a for a in args if "=" not in a]
    if bad:
        return None, f"{command} takes key=value arguments (got {bad[0]!r}); e.g. {example}"
    try:
        return kv.resolve(command, args, missing), None
    except kv.UsageError as exc:
        return None, str(exc)


def report_cli(args: List[str]) -> int:
    from mtlbench.results.report import Options, ReportError, write_all, write_report
    from mtlbench.results.store import StoreError

    c, msg = command_config("report", args, "python -m mtlbench report dataset=multimnist baseline=stl")
    if msg:
        return fail(msg)
    fmt = c["format"] if isinstance(c["format"], list) else [c["format"]]
    methods = c["methods"] if isinstance(c["methods"], (list, type(None))) else [c["methods"]]
    try:
        for key in ("results_dir", "reports_dir"):
            if not isinstance(c[key], str) or not c[key].strip():
                raise ValueError(f"{key} must be a non-empty path (got {c[key]!r})")
        opts = Options(baseline=c["baseline"], methods=methods, split=c["split"], formats=fmt, test=c["test"],
                       alpha=c["alpha"], delta=c["delta"], confidence=c["confidence"],
                       n_resamples=c["n_resamples"], posthoc=c["posthoc"], seed=c["seed"], plots=c["plots"],
                       published=c.get("published"),
                       metrics=None if c["metrics"] is None else list(c["metrics"]) if isinstance(c["metrics"], list)
                       else [c["metrics"]], names=c["names"], precision=c["precision"], percent=bool(c["percent"]),
                       resizebox=bool(c["resizebox"]), footnote=c["footnote"], second_mark=c["second_mark"],
                       columns=c["columns"]).check()
        if c["dataset"] in (None, "", "all"):
            out = write_all(c["results_dir"], c["reports_dir"], opts)
        else:
            out = write_report(c["results_dir"], c["reports_dir"], c["dataset"], opts=opts)
    except (ReportError, StoreError, ValueError, OSError) as exc:
        return fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    print((out / "summary.md").read_text())
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"[mtlbench] report written to {out}/: {', '.join(files)}")
    return 0


def list_cli(args: List[str]) -> int:
    from mtlbench.cli.names import list_cli as _list

    return _list(args)


def bench_cli(args: List[str]) -> int:
    from mtlbench.bench import main as bench_main

    return bench_main(args)


def group_cli(args: List[str]) -> int:
    from mtlbench.cli.group import main as group_main

    return group_main(args)


def data_cli(args: List[str]) -> int:
    from mtlbench.cli.data import main as data_main

    return data_main(args)


def clean_cli(args: List[str]) -> int:
    from mtlbench.cli.clean import main as clean_main

    return clean_main(args)


COMMANDS = {"run": run_cli, "report": report_cli, "list": list_cli, "bench": bench_cli, "group": group_cli,
            "data": data_cli, "clean": clean_cli}


def kv_spec(cmd: str):
    """The key=value style of report / group / data / clean (None for the others)."""
    from mtlbench.cli import kv

    if cmd == "report":
        return kv.Spec("report", "python -m mtlbench report [dataset=<name>|all] [key=value ...]",
                       "python -m mtlbench report dataset=multimnist baseline=stl", sweeps=True)
    if cmd == "group":
        return kv.Spec("group", "python -m mtlbench group scores=FILE.csv budget=B [key=value ...]",
                       "python -m mtlbench group scores=scores.csv budget=2")
    if cmd == "data":
        from mtlbench.cli.data import SPEC

        return SPEC
    if cmd == "clean":
        from mtlbench.cli.clean import SPEC

        return SPEC
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        return fail(f"unknown command '{cmd}'; commands: {', '.join(COMMANDS)} (python -m mtlbench --help)")
    from mtlbench.core.registry import RegistryError

    try:
        spec = kv_spec(cmd)
        if spec is not None:
            from mtlbench.cli.kv import dispatch

            return dispatch(spec, rest, COMMANDS[cmd])
        return COMMANDS[cmd](rest)
    except RegistryError as exc:
        return fail(str(exc))
