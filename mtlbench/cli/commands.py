"""Command line: ``python -m mtlbench {run,report,list,bench} [overrides...]``.

Hydra owns argv for ``run`` (so ``-m`` sweeps and launchers work); this dispatcher
pops the subcommand first. Known errors become one line on stderr (exit 2), never a
traceback from deep inside.
"""
from __future__ import annotations

import os
import sys
from importlib import resources
from typing import List, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from mtlbench.engine.checkpoint import CheckpointError
from mtlbench.core.data import DataError
from mtlbench.core.registry import ALL, RegistryError
from mtlbench.results.store import StoreError
from mtlbench.engine.trainer import TrainingError

USAGE = """usage: python -m mtlbench <command> [key=value ...]

commands:
  run      train and evaluate: python -m mtlbench run method=stl dataset=multimnist seed=1
           sweeps: python -m mtlbench run -m method=stl,hard_sharing seed=0,1,2 profile=tiny
  report   summarise a dataset's runs: python -m mtlbench report dataset=multimnist [baseline=stl]
  list     what is registered (archs, balancers, procedures, backbones, datasets) and the presets
  bench    benchmarks: python -m mtlbench bench {overhead,archs,grouping,tabular,adashare}
  group    select task groups from a score table: python -m mtlbench group scores=FILE.csv budget=2
"""

# OSError: disk full, permissions, unreadable files (the message names the path)
KNOWN_ERRORS = (RegistryError, DataError, StoreError, TrainingError, CheckpointError, ValueError, TypeError, OSError)
CONFIG_GROUPS = ("method", "dataset", "arch", "balancer", "procedure", "backbone", "profile", "trainer")

_failures: List[str] = []


def fail(msg: str) -> int:
    """Print one line on stderr (set MTLBENCH_DEBUG=1 to get tracebacks instead)."""
    print(f"mtlbench: error: {msg}", file=sys.stderr, flush=True)
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
            if v and v not in known:
                return f"unknown {key} '{v}'; known {key}s: {', '.join(known)}"
    return None


@hydra.main(config_path="pkg://mtlbench.conf", config_name="config", version_base=None)
def _hydra_run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mtlbench.engine.configs import set_searchpath
    from mtlbench.engine.run import execute

    hc = HydraConfig.get()
    set_searchpath(list(hc.searchpath or []))  # child runs compose with the same search path
    files = {"overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))),
             "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)}))}
    try:
        execute(cfg, hydra_files=files)
    except KNOWN_ERRORS as exc:
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


def precompose(args: List[str]) -> Optional[str]:
    """Compose a single run's config up front so a bad override is one line, not Hydra's report."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    if any(a.startswith("-") for a in args):  # -m, --cfg, --help...: Hydra's own handling
        return None
    from mtlbench.engine.configs import register_defaults, searchpath_of, set_searchpath

    set_searchpath(searchpath_of(args))
    register_defaults()
    try:
        with initialize_config_module("mtlbench.conf", version_base=None):
            compose("config", overrides=args)
    except HydraException as exc:
        return " ".join(line.strip() for line in str(exc).splitlines()[:2])
    return None


LAUNCHER_PLUGINS = {"local": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def check_launcher(args: List[str]) -> Optional[str]:
    import importlib.util

    for a in args:
        key, _, value = a.partition("=")
        if key.lstrip("+") == "hydra/launcher" and value in LAUNCHER_PLUGINS:
            module, extra = LAUNCHER_PLUGINS[value]
            if importlib.util.find_spec(module) is None:
                return f"hydra/launcher={value} needs its Hydra plugin: pip install -e \".[{extra}]\""
    return None


def run_cli(args: List[str]) -> int:
    msg = check_launcher(args) or check_group_overrides(args) or precompose(args)
    if msg:
        return fail(msg)
    _failures.clear()
    import tempfile

    from mtlbench.engine.configs import register_defaults, searchpath_of, set_searchpath

    try:
        set_searchpath(searchpath_of(args))
    except Exception:  # an unparsable override: Hydra reports it below
        set_searchpath([])
    register_defaults()  # registered plugins without a YAML compose with their defaults

    fd, failures_file = tempfile.mkstemp(prefix="mtlbench-failures-", suffix=".txt")
    os.close(fd)
    os.environ["MTLBENCH_FAILURES"] = failures_file
    # launcher workers (joblib's reused processes, SLURM jobs) get it through Hydra
    env_override = f"++hydra.job.env_set.MTLBENCH_FAILURES={failures_file}"
    flags = [a for a in args if a.startswith("-")]  # Hydra takes -m/--multirun before overrides only
    saved = sys.argv
    sys.argv = ["mtlbench run", *flags, *[a for a in args if not a.startswith("-")], env_override]
    try:
        _hydra_run()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else fail(exc.code)
    finally:
        sys.argv = saved
        set_searchpath([])
        os.environ.pop("MTLBENCH_FAILURES", None)
        with open(failures_file) as f:
            failed = len(f.read().splitlines())
        os.unlink(failures_file)
    if failed or _failures:
        return fail(f"{max(failed, len(_failures))} job(s) of the sweep failed (see above)")
    return 0


def command_config(command: str, args: List[str], example: str, missing: Optional[str] = None):
    """The plain config of a key=value command (``mtlbench/conf/<command>.yaml`` merged with
    ``args``) and None, or None and a one-line message naming the fix."""
    from omegaconf.errors import OmegaConfBaseException

    bad = [a for a in args if "=" not in a]
    if bad:
        return None, f"{command} takes key=value arguments (got {bad[0]!r}); e.g. {example}"
    base = OmegaConf.create(resources.files("mtlbench.conf").joinpath(f"{command}.yaml").read_text())
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(args))
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True), None
    except OmegaConfBaseException as exc:
        if missing and "Missing mandatory value" in str(exc):
            return None, missing
        return None, f"{str(exc).splitlines()[0]}; {command} keys: {', '.join(base.keys())}"


def report_cli(args: List[str]) -> int:
    from mtlbench.results.report import Options, ReportError, write_all, write_report

    c, msg = command_config("report", args, "python -m mtlbench report dataset=multimnist baseline=stl")
    if msg:
        return fail(msg)
    fmt = c["format"] if isinstance(c["format"], list) else [c["format"]]
    methods = c["methods"] if isinstance(c["methods"], (list, type(None))) else [c["methods"]]
    try:
        opts = Options(baseline=c["baseline"], methods=methods, split=c["split"], formats=fmt, test=c["test"],
                       alpha=float(c["alpha"]), delta=c["delta"], confidence=float(c["confidence"]),
                       n_resamples=int(c["n_resamples"]), posthoc=c["posthoc"], seed=int(c["seed"]),
                       plots=bool(c["plots"]), published=c.get("published"),
                       metrics=None if c["metrics"] is None else list(c["metrics"]) if isinstance(c["metrics"], list)
                       else [c["metrics"]]).check()
        if c["dataset"] in (None, "", "all"):
            out = write_all(c["results_dir"], c["reports_dir"], opts)
        else:
            out = write_report(c["results_dir"], c["reports_dir"], c["dataset"], opts=opts)
    except (ReportError, StoreError, ValueError) as exc:
        return fail(str(exc))
    print((out / "summary.md").read_text())
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"[mtlbench] report written to {out}/: {', '.join(files)}")
    return 0


def list_cli(args: List[str]) -> int:
    for kind, reg in ALL.items():
        print(f"{kind}s: {', '.join(reg.names())}")
    print(f"methods (presets): {', '.join(config_options('method'))}")
    print(f"profiles: {', '.join(config_options('profile'))}")
    return 0


def bench_cli(args: List[str]) -> int:
    from mtlbench.bench import main as bench_main

    return bench_main(args)


def group_cli(args: List[str]) -> int:
    from mtlbench.cli.group import main as group_main

    return group_main(args)


COMMANDS = {"run": run_cli, "report": report_cli, "list": list_cli, "bench": bench_cli, "group": group_cli}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        return fail(f"unknown command '{cmd}'; commands: {', '.join(COMMANDS)} (python -m mtlbench --help)")
    try:
        return COMMANDS[cmd](rest)
    except RegistryError as exc:
        return fail(str(exc))
