"""The checks ``python -m mtlbench run`` makes before Hydra starts, each a one-line message.

* flags anywhere: ``run method=stl --cfg job`` works (Hydra wants its flags first, with
  their values: ``--cfg job``, ``--package p``, ``--info [what]``);
* a comma-separated value without ``-m`` gets the whole hint (not Hydra's first lines);
* an unknown key names the closest real key (``epochs=2`` -> ``trainer.epochs``) instead of
  Hydra's advice to append ``+epochs=2``, which nothing would read; ``+key=...`` adding a
  top-level key that nothing reads is refused the same way;
* an overlay (``conf/overlay/<method>/<dataset>.yaml``) never silently replaces a group the
  user chose on the command line: ``method=adashare dataset=cityscapes backbone=small_resnet``
  keeps small_resnet (the overlay's ``backbone.*`` keys are reset to small_resnet's own, with
  one line saying so), or fails in one line when that cannot be done.
"""
from __future__ import annotations

import difflib
import itertools
from importlib import resources
from typing import List, Optional, Tuple

VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun")
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
LAUNCHER_PLUGINS = {"local": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def split_flags(args: List[str]) -> Tuple[List[str], List[str]]:
    """(Hydra flags with their values, in order; the overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a in VALUE_FLAGS and i + 1 < len(args):
            flags += [a, args[i + 1]]
            i += 2
            continue
        if a in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in INFO_VALUES:
            flags += [a, args[i + 1]]
            i += 2
            continue
        (flags if a.startswith("-") else overrides).append(a)
        i += 1
    return flags, overrides


def _parse(overrides: List[str]):
    from mtlbench.cli.kv import parse

    return parse([o for o in overrides if not o.startswith("-")])


def check_sweeps(overrides: List[str], multirun: bool) -> int:
    """The number of jobs; a sweep without -m raises the whole hint."""
    from mtlbench.cli.kv import UsageError, sweep_hint

    try:
        parsed = _parse(overrides)
    except UsageError:
        return 1  # Hydra reports the bad token itself
    swept = [a for o, a in zip(parsed, overrides) if o.is_sweep_override()]
    if swept and not multirun:
        raise ValueError(sweep_hint("run", swept, True))
    n = 1
    for o in parsed:
        if o.is_sweep_override():
            n *= len(list(o.sweep_string_iterator()))
    return n


def check_launcher(args: List[str]) -> Optional[str]:
    import importlib.util

    for a in args:
        key, _, value = a.partition("=")
        if key.lstrip("+") != "hydra/launcher":
            continue
        if value in LAUNCHER_PLUGINS:
            module, extra = LAUNCHER_PLUGINS[value]
            if importlib.util.find_spec(module) is None:
                return f"hydra/launcher={value} needs its Hydra plugin: pip install -e \".[{extra}]\""
        known = launcher_options()
        if known and value not in known:
            return f"unknown hydra/launcher '{value}'; known launchers: {', '.join(known)}"
    return None


def launcher_options() -> List[str]:
    """Hydra's launcher configs (its own, mtlbench's, installed plugins'); [] when unknown."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.utils import create_config_search_path
        from hydra.core.plugins import Plugins

        Plugins.instance()
        loader = ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://mtlbench.conf"))
        return sorted(loader.get_group_options("hydra/launcher"))
    except Exception:  # a Hydra without these internals: Hydra reports unknown launchers itself
        return []


def check_sweep_store(overrides: List[str], multirun: bool) -> Optional[str]:
    """A sweep writes results/.sweeps/ before any job: an unwritable results_dir is one line
    here, not Hydra's traceback."""
    import os
    from pathlib import Path

    if not multirun:
        return None
    given = [a.partition("=")[2] for a in overrides if a.lstrip("+").startswith("results_dir=")]
    where = given[-1].strip("'\"") if given else "results"
    if not where or "," in where or "$" in where:
        return None if where else "results_dir must be a non-empty path (got '')"
    p = Path(where).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        what = "not a folder" if not p.is_dir() else "read-only"
        return f"results_dir={where} is not writable ({p} is {what}); set results_dir= to a writable folder"
    return None


def _conf_yaml(path: str) -> Optional[dict]:
    from omegaconf import OmegaConf

    f = resources.files("mtlbench.conf").joinpath(path)
    if not f.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.create(f.read_text()), resolve=False)


def _defaults() -> dict:
    """config.yaml's default group choices."""
    out = {}
    for entry in _conf_yaml("config.yaml").get("defaults", []):
        if isinstance(entry, dict):
            out.update({k: v for k, v in entry.items() if isinstance(v, str)})
    return out


def _leaves(node: dict, prefix: str = "") -> List[str]:
    out = []
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _get(node: dict, dotted: str):
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            raise KeyError(dotted)
        node = node[k]
    return node


def _fmt(v) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def overlay_overrides(overrides: List[str]) -> List[str]:
    """Overrides that keep the user's group choices over a per-(method, dataset) overlay."""
    from mtlbench.cli.kv import UsageError

    try:
        parsed = _parse(overrides)
    except UsageError:
        return []
    chosen = {o.key_or_group: o for o in parsed if o.key_or_group in
              ("method", "dataset", "arch", "balancer", "procedure", "backbone", "trainer")}
    explicit = {o.key_or_group for o in parsed if "." in o.key_or_group}
    base = _defaults()
    values = lambda g: (list(chosen[g].sweep_string_iterator()) if chosen[g].is_sweep_override()  # noqa: E731
                        else [str(chosen[g].value())]) if g in chosen else [base.get(g)]
    extra: List[str] = []
    for method, dataset in itertools.product(values("method"), values("dataset")):
        overlay = _conf_yaml(f"overlay/{method}/{dataset}.yaml")
        if not overlay:
            continue
        for group in (g for g in chosen if g not in ("method", "dataset") and isinstance(overlay.get(g), dict)):
            o = chosen[group]
            if o.is_sweep_override():
                raise ValueError(f"conf/overlay/{method}/{dataset}.yaml sets {group}.* and {group} is swept: "
                                 f"run the {group} values one by one, or give {group}.<key>=... values")
            mine = _conf_yaml(f"{group}/{o.value()}.yaml") or {}
            keys = [k for k in _leaves(overlay[group]) if f"{group}.{k}" not in explicit]
            for k in keys:
                try:
                    extra.append(f"{group}.{k}={_fmt(_get(mine, k))}")
                except KeyError:
                    raise ValueError(f"conf/overlay/{method}/{dataset}.yaml sets {group}.{k}, which {group}="
                                     f"{o.value()} does not have: choose {group} with {group}.name=... or set "
                                     f"{group}.{k} yourself") from None
            if keys:
                print(f"[mtlbench] {group}={o.value()} from the command line wins over conf/overlay/{method}/"
                      f"{dataset}.yaml (which sets {', '.join(f'{group}.{k}' for k in keys)})", flush=True)
    return list(dict.fromkeys(extra + _dataset_backbone(chosen, explicit, values("dataset"))))


def _dataset_backbone(chosen: dict, explicit: set, datasets: List[str]) -> List[str]:
    """A dataset config's ``backbone.*`` keys tune the backbone it picks (multimnist: the
    small_cnn stem stride); a different ``backbone=`` from the command line gets its own
    values for them, and loses those it does not have (``~backbone.<key>``)."""
    o = chosen.get("backbone")
    if o is None:
        return []
    extra: List[str] = []
    for dataset in datasets:
        conf = _conf_yaml(f"dataset/{dataset}.yaml") or {}
        own = next((e["override /backbone"] for e in conf.get("defaults", []) if isinstance(e, dict)
                    and "override /backbone" in e), None)
        keys = [k for k in _leaves(conf.get("backbone") or {}) if f"backbone.{k}" not in explicit]
        if not keys:
            continue
        if o.is_sweep_override():
            raise ValueError(f"conf/dataset/{dataset}.yaml sets backbone.{keys[0]} (for {own}) and backbone is "
                             f"swept: run the backbone values one by one")
        if str(o.value()) == own:
            continue
        if len(datasets) > 1:  # one override for every job: it cannot differ by dataset
            raise ValueError(f"conf/dataset/{dataset}.yaml sets backbone.{keys[0]} for {own}, not for backbone="
                             f"{o.value()}: run dataset={dataset} in a command of its own")
        mine = _conf_yaml(f"backbone/{o.value()}.yaml") or {}
        for k in keys:
            try:
                extra.append(f"backbone.{k}={_fmt(_get(mine, k))}")
            except KeyError:
                extra.append(f"~backbone.{k}")
        print(f"[mtlbench] backbone={o.value()} from the command line: conf/dataset/{dataset}.yaml's "
              f"{', '.join(f'backbone.{k}' for k in keys)} (for {own}) not applied", flush=True)
    return extra


def _compose(overrides: List[str]):
    from hydra import compose, initialize_config_module

    from mtlbench.engine.configs import register_defaults, searchpath_of, set_searchpath

    set_searchpath(searchpath_of(overrides))
    register_defaults()
    with initialize_config_module("mtlbench.conf", version_base=None):
        return compose("config", overrides=overrides)


def _keys(cfg, prefix: str = "") -> List[str]:
    out = []
    for k, v in cfg.items():
        out.append(f"{prefix}{k}")
        if hasattr(v, "items"):
            out += _keys(v, f"{prefix}{k}.")
    return out


def unknown_key_message(key: str, keys: List[str]) -> str:
    leaf = key.split(".")[-1]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    close = close or [k for k in keys if k.split(".")[-1] == leaf] or difflib.get_close_matches(
        key, keys, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}={{value}}?)" if close else ""
    top = sorted({k.split(".")[0] for k in keys} - {"hydra"})
    return (f"unknown config key '{key}'{hint}; top-level keys: {', '.join(top)} "
            f"(python -m mtlbench run --cfg job shows every key)")


def check_additions(overrides: List[str]) -> Optional[str]:
    """``+key=value`` adding a top-level key that nothing reads is refused."""
    from mtlbench.cli.kv import UsageError

    try:
        parsed = _parse(overrides)
    except UsageError:
        return None
    adds = [o for o in parsed if o.is_add() or o.is_force_add()]
    if not adds:
        return None
    top = set((_conf_yaml("config.yaml") or {}).keys()) | {"hydra"}
    top |= {p.name for p in resources.files("mtlbench.conf").iterdir() if p.is_dir()}
    for o in adds:
        name = o.key_or_group.split(".")[0].split("@")[0]
        if name not in top:
            keys = _keys(_compose([a for a in overrides if not a.startswith("+")]))
            return (unknown_key_message(o.key_or_group, keys).replace("{value}", str(o.value()))
                    + f": '{o.input_line}' would add a key nothing reads")
    return None


def precompose(args: List[str]) -> Optional[str]:
    """Compose a single run's config up front so a bad override is one line, not Hydra's report."""
    from hydra.errors import HydraException

    try:
        _compose(args)
    except HydraException as exc:
        text = str(exc)
        if text.startswith("Could not override '"):
            key = text.split("'")[1]
            value = next((a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key), "...")
            rest = [a for a in args if a.split("=", 1)[0] != key]
            try:
                keys = _keys(_compose(rest))
            except HydraException:
                keys = []
            return unknown_key_message(key, keys).replace("{value}", value)
        return " ".join(text.split())
    return None


def run_help() -> str:
    from mtlbench.cli.names import static_names
    from mtlbench.engine.configs import yaml_options

    names = static_names()
    groups = [("method", yaml_options("method")), *((g, names[g]) for g in ("arch", "balancer", "procedure",
                                                                             "backbone", "dataset")),
              ("profile", yaml_options("profile")), ("logger", yaml_options("logger"))]
    lines = ["usage: python -m mtlbench run [group=option ...] [key=value ...] [-m] [--cfg job]", "",
             "config groups (group=option):"]
    lines += [f"  {g:10s} {', '.join(opts)}" for g, opts in groups]
    lines += ["", "keys: seed, results_dir, reports_dir, data_root, force, resume, trainer.<key>, dataset.<key>, ",
              "      arch.<key>, balancer.<key>, procedure.<key>, backbone.<key> (python -m mtlbench run --cfg job",
              "      prints them all with their values; add overrides to see their effect)",
              "flags: -m (sweep comma-separated values), --cfg job, --hydra-help; flags may follow overrides",
              "examples:", "  python -m mtlbench run method=stl seed=1",
              "  python -m mtlbench run -m method=stl,hard_sharing seed=0,1,2 profile=tiny"]
    return "\n".join(lines)
