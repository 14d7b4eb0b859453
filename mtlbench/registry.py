"""Compatibility: the registry lives in ``mtlbench.core.registry``; ``from mtlbench.registry
import ARCHS`` (and the other registries) keeps working for plugins written against it."""
from mtlbench.core.registry import *  # noqa: F401,F403
from mtlbench.core.registry import ALL, ENTRY_POINT_GROUPS, Registry, RegistryError, load_all  # noqa: F401
