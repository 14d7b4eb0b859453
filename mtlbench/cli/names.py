"""Registered names without importing torch: ``python -m mtlbench list`` and ``--help``.

Importing the method and dataset modules (what the registry does on first lookup) imports
torch, which takes seconds. ``static_names()`` reads the same modules' source instead and
collects every ``@<REGISTRY>.register("<name>")`` decorator (``ast``, no import). When a
plugin package is installed (entry points ``mtlbench.methods`` / ``mtlbench.datasets``) or
a registration is not a plain string literal, it falls back to the registry itself, so the
answer is always the registry's (``tests/test_cli_style.py`` checks both agree).
"""
from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path
from typing import Dict, List, Optional

import mtlbench

KINDS = {"ARCHS": "arch", "BALANCERS": "balancer", "PROCEDURES": "procedure", "BACKBONES": "backbone",
         "DATASETS": "dataset"}
PACKAGES = ("backbones", "methods", "datasets")


def _files() -> List[Path]:
    roots = [Path(p) for p in mtlbench.__path__]
    out = []
    for pkg in PACKAGES:
        for root in roots:
            folder = root / pkg
            if folder.is_dir():
                out += [f for f in sorted(folder.rglob("*.py"))
                        if pkg == "backbones" or not any(part.startswith("_") and part != "__init__.py"
                                                         for part in f.relative_to(folder).parts)]
    return out


def _scan(path: Path) -> Optional[Dict[str, List[str]]]:
    """{kind: names} registered in ``path``; None when a registration is not a literal."""
    tree = ast.parse(path.read_text(), str(path))
    found: Dict[str, List[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr != "register" or not isinstance(node.func.value, ast.Name):
            continue
        kind = KINDS.get(node.func.value.id)
        if kind is None:
            continue
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            return None
        found.setdefault(kind, []).append(node.args[0].value)
    return found


def _plugins() -> bool:
    from mtlbench.core.registry import ENTRY_POINT_GROUPS

    return any(True for g in ENTRY_POINT_GROUPS for _ in importlib.metadata.entry_points(group=g))


def static_names() -> Dict[str, List[str]]:
    """{kind: sorted names}: the registry's names, read from source where possible."""
    names: Dict[str, set] = {k: set() for k in KINDS.values()}
    if not _plugins():
        for f in _files():
            got = _scan(f)
            if got is None:
                break
            for kind, ns in got.items():
                names[kind] |= set(ns)
        else:
            return {k: sorted(v) for k, v in names.items()}
    from mtlbench.core.registry import ALL

    return {kind: reg.names() for kind, reg in ALL.items()}


def presets() -> List[str]:
    from mtlbench.engine.configs import yaml_options

    return yaml_options("method")


def list_cli(args: List[str]) -> int:
    from mtlbench.engine.configs import yaml_options

    if any(a in ("-h", "--help") for a in args):
        print("usage: python -m mtlbench list   (everything registered, the presets and profiles)")
        return 0
    if args:
        from mtlbench.cli.commands import fail

        return fail(f"list takes no arguments (got {args[0]!r})")
    for kind, ns in static_names().items():
        print(f"{kind}s: {', '.join(ns)}")
    print(f"methods (presets): {', '.join(presets())}")
    print(f"profiles: {', '.join(yaml_options('profile'))}")
    print(f"loggers: {', '.join(yaml_options('logger'))}")
    return 0
