"""Configs: Hydra composition, the one source of truth for names, and method presets.

* **Names.** The valid values of the config groups ``arch`` / ``balancer`` / ``procedure`` /
  ``backbone`` / ``dataset`` are the registry's names (``mtlbench.core.registry``): each has
  its YAML in ``mtlbench/conf/<group>/`` (the built-in ones: a contract test checks both
  directions), and a registered plugin without a YAML gets a default node ``{name: <name>}``
  (its class's own defaults) through Hydra's ConfigStore (``register_defaults``).
* **Presets.** ``conf/method/<name>.yaml`` states its choices once, in its defaults list
  (``override /arch: mtan``, ...), and marks the run with ``preset: <name>``. The run's
  method is that name when the composed arch / balancer / procedure are the preset's, else
  ``<arch>+<balancer>`` (``+<procedure>`` unless single). For the run id (config hash)
  the preset node is expanded to ``{name, arch, balancer, procedure}``, the form run ids
  have always been computed from.
* **Composition** (``compose``, ``config_node``) goes through Hydra with the search path of
  the running command (``hydra.searchpath=[pkg://plugin.conf]``), so plugin configs are
  found by procedures' child runs too.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

GROUPS = ("arch", "balancer", "procedure", "backbone", "dataset")


def register_resolvers() -> None:
    """``${mtlbench_uid:}``: a token unique to one composed config (process id + random
    hex, cached with the config), so two sweeps started in the same second get distinct
    ``results/.sweeps/<time>-<uid>`` folders."""
    import os
    import secrets

    if not OmegaConf.has_resolver("mtlbench_uid"):
        OmegaConf.register_new_resolver("mtlbench_uid", lambda: f"{os.getpid()}-{secrets.token_hex(2)}",
                                        use_cache=True)


register_resolvers()
_searchpath: List[str] = []


def set_searchpath(paths: Sequence[str]) -> None:
    """The extra Hydra search path of this process (from ``hydra.searchpath=[...]``)."""
    _searchpath[:] = [str(p) for p in paths]
    preset_choices.cache_clear()


def searchpath_of(overrides: Sequence[str]) -> List[str]:
    """The ``hydra.searchpath=[...]`` entries of command-line overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides([a for a in overrides if not a.startswith("-")]):
        if o.key_or_group.lstrip("+") == "hydra.searchpath":
            value = o.value()
            return [str(v) for v in (value if isinstance(value, list) else [value])]
    return []


def registry_of(group: str):
    from mtlbench.core.registry import ALL

    return ALL[group]


_registered: set = set()


def register_defaults() -> None:
    """Give every registered name without a YAML (in the package or on the search path) a
    ConfigStore node ``{name: <name>}``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group in GROUPS:
        known = set(yaml_options(group))
        for name in registry_of(group).names():
            key = (group, name)
            if name in known:
                if key in _registered:  # a config file appeared on the search path: it wins
                    cs.repo.get(group, {}).pop(f"{name}.yaml", None)
                    _registered.discard(key)
                continue
            node = {"name": name} if group != "dataset" else {"dataset": {"name": name, "root": None,
                                                                           "split_seed": 0, "limit": None,
                                                                           "tasks": None}}
            cs.store(group=group, name=name, node=node, package=None if group != "dataset" else "_global_")
            _registered.add(key)


def yaml_options(group: str, package_only: bool = False) -> List[str]:
    """The YAML files of a config group in ``mtlbench/conf`` (and on the search path)."""
    from importlib import resources

    roots = [resources.files("mtlbench.conf")]
    for entry in [] if package_only else _searchpath:
        kind, _, where = entry.partition("://")
        try:
            roots.append(Path(where) if kind == "file" else resources.files(where) if kind == "pkg" else None)
        except (ModuleNotFoundError, TypeError):
            continue
    names = set()
    for root in (r for r in roots if r is not None):
        folder = root / group
        if folder.is_dir():
            names |= {q.name[:-5] for q in folder.iterdir() if q.name.endswith(".yaml")}
    return sorted(names)


def options(group: str) -> List[str]:
    """The valid values of a config group: YAML files, plus registered names for the
    registry-backed groups."""
    names = set(yaml_options(group))
    if group in GROUPS:
        names |= set(registry_of(group).names())
    return sorted(names)


def compose(overrides: Sequence[str] = ()) -> dict:
    """The resolved run config for ``overrides`` (with this process's search path)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    extra = [f"hydra.searchpath=[{','.join(_searchpath)}]"] if _searchpath else []
    register_defaults()
    if GlobalHydra.instance().is_initialized():  # inside the running app (its search path)
        cfg = hydra_compose("config", overrides=[*extra, *overrides])
    else:
        with initialize_config_module("mtlbench.conf", version_base=None):
            cfg = hydra_compose("config", overrides=[*extra, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def config_node(group: str, name: str) -> dict:
    """One config group's node as a run would get it (``conf/<group>/<name>.yaml``)."""
    from hydra.errors import HydraException

    try:
        return compose([f"{group}={name}"])[group]
    except HydraException:
        raise ValueError(f"unknown {group} '{name}'; known {group}s: {', '.join(options(group))} "
                         f"(or a config on hydra.searchpath)") from None


@functools.lru_cache(maxsize=None)
def preset_choices(name: str) -> Tuple[str, str, str]:
    """(arch, balancer, procedure) that ``method=<name>`` selects (its defaults list)."""
    c = compose([f"method={name}"])
    return c["arch"]["name"], c["balancer"]["name"], c["procedure"]["name"]


def preset_node(c: dict) -> Optional[Dict[str, str]]:
    """The run's preset as ``{name, arch, balancer, procedure}`` (None: no preset)."""
    p = c.get("preset")
    if isinstance(p, dict):  # the form of configs written before presets stated their choice once
        return p
    if not p:
        return None
    arch, balancer, procedure = preset_choices(str(p))
    return {"name": str(p), "arch": arch, "balancer": balancer, "procedure": procedure}


def expand_preset(c: dict) -> dict:
    """``c`` with its preset node in the expanded form (what the run id is computed from)."""
    node = preset_node(c)
    return c if node is None or c.get("preset") == node else {**c, "preset": node}


def method_name(c: dict) -> str:
    """The preset's name, or ``<arch>+<balancer>`` when arch/balancer/procedure were overridden."""
    preset = preset_node(c) or {}
    chosen = (c["arch"]["name"], c["balancer"]["name"], c["procedure"]["name"])
    if preset.get("name") and chosen == (preset.get("arch"), preset.get("balancer"), preset.get("procedure")):
        return preset["name"]
    name = f"{chosen[0]}+{chosen[1]}"
    return name if chosen[2] == "single" else f"{name}+{chosen[2]}"
