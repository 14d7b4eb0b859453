"""One small registry mechanism for everything a config can name.

Architectures, loss balancers, procedures, backbones and datasets each have a
``Registry``. Code registers with a decorator::

    from mtlbench.core.registry import ARCHS

    @ARCHS.register("my_arch")
    class MyArch(MTLModel): ...

Everything in ``mtlbench.methods`` and ``mtlbench.datasets`` is imported on first
lookup, and so is every module a separate package names in the entry-point groups
``mtlbench.methods`` / ``mtlbench.datasets`` (see README, "Plugins").
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUPS = ("mtlbench.methods", "mtlbench.datasets")


class RegistryError(KeyError):
    """Unknown or duplicate name. ``str()`` is a one-line message naming the fix."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice "
                    f"({_where(self._items[name])} and {_where(obj)}): pick another name"
                )
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable:
        load_all()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} '{name}'; known {self.kind}s: {', '.join(self.names()) or '(none)'}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        load_all()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        load_all()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _where(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


ARCHS = Registry("arch")
BALANCERS = Registry("balancer")
PROCEDURES = Registry("procedure")
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
ALL = {r.kind: r for r in (ARCHS, BALANCERS, PROCEDURES, BACKBONES, DATASETS)}

_loaded = False
_loading = False


def load_all() -> None:
    """Import the built-in method/dataset modules and every plugin entry point.

    Done once per process when it succeeds; a failure (a broken plugin) is raised again
    on every later lookup rather than leaving a silently incomplete registry.
    """
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        _import_everything()
        _loaded = True
    finally:
        _loading = False


def _import_everything() -> None:
    import mtlbench.backbones  # noqa: F401  (the built-in backbones register on import)

    for pkg_name in ("mtlbench.methods", "mtlbench.datasets"):
        pkg = importlib.import_module(pkg_name)
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{mod.name}")
    for group in ENTRY_POINT_GROUPS:
        for ep in importlib.metadata.entry_points(group=group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not break the suite
                raise RegistryError(
                    f"plugin entry point '{ep.name} = {ep.value}' (group {group}) failed to load: "
                    f"{type(exc).__name__}: {exc}; fix or uninstall that package"
                ) from exc
