"""One command-line style for every command: Hydra-style ``key=value`` overrides.

``report``, ``group``, ``data`` and ``clean`` read their keys from
``mtlbench/conf/<command>.yaml`` (the file, with its comments, is their ``--help``);
values are parsed with Hydra's override grammar (``key=[a,b]``, ``key='a,b'``, ``key=null``),
unknown keys fail with one line that names the closest key, as for ``run``. Flags may come
anywhere, before or after the overrides:

* ``--help`` / ``-h``: the usage line and the command's keys with their defaults;
* ``--cfg job``: the resolved config of the command, then exit (nothing runs);
* ``-m`` / ``--multirun``: one run of the command per combination of the comma-separated
  values (``report -m dataset=scenes,multimnist``) where a sweep makes sense; without
  ``-m`` a comma-separated value is refused with the whole hint;
* command flags map to keys: ``clean --failed --dry-run`` = ``clean failed=true dry_run=true``.

Only the standard library, OmegaConf and Hydra's override parser are imported here (no
torch): ``--help`` and ``--cfg`` answer at once.
"""
from __future__ import annotations

import difflib
import itertools
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HELP_FLAGS = ("-h", "--help")
MULTIRUN_FLAGS = ("-m", "--multirun")
CFG_FLAGS = ("--cfg", "-c")


class UsageError(ValueError):
    """A one-line message about the command line."""


@dataclass
class Spec:
    """How a key=value command reads its command line."""
    name: str
    usage: str
    example: str
    sweeps: bool = False                                 # -m makes sense
    flags: Dict[str, str] = field(default_factory=dict)  # --flag -> key set to true
    positional: Optional[Callable[[List[str]], List[str]]] = None  # bare words -> overrides


@dataclass
class Args:
    overrides: List[str]
    help: bool = False
    cfg: Optional[str] = None
    multirun: bool = False


def split(spec: Spec, args: Sequence[str]) -> Args:
    """Flags (anywhere) apart from the overrides; bare words through ``spec.positional``."""
    out, words, i = Args([]), [], 0
    args = list(args)
    while i < len(args):
        a = args[i]
        if a in HELP_FLAGS:
            out.help = True
        elif a in MULTIRUN_FLAGS:
            out.multirun = True
        elif a in CFG_FLAGS or a.startswith("--cfg="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            i += 0 if "=" in a else 1
            if value not in ("job", "all"):
                raise UsageError(f"--cfg takes job (e.g. python -m mtlbench {spec.name} --cfg job)")
            out.cfg = value
        elif a in spec.flags:
            out.overrides.append(f"{spec.flags[a]}=true")
        elif a.startswith("-") and "=" not in a:
            known = [*HELP_FLAGS, "--cfg job", *(MULTIRUN_FLAGS if spec.sweeps else ()), *spec.flags]
            raise UsageError(f"unknown flag {a} for {spec.name}; flags: {', '.join(known)}")
        elif "=" in a:
            out.overrides.append(a)
        else:
            words.append(a)
        i += 1
    if words:
        if spec.positional is None:
            raise UsageError(f"{spec.name} takes key=value arguments (got {words[0]!r}); e.g. {spec.example}")
        out.overrides = spec.positional(words) + out.overrides
    return out


def parse(overrides: Sequence[str]):
    """Hydra's parsed overrides (a bad token is a one-line UsageError)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def sweep_hint(command: str, sweeps: Sequence[str], multirun_ok: bool) -> str:
    """The whole hint for a comma-separated value given without -m."""
    shown = " ".join(sweeps)
    how = (f"to run once per value add -m (python -m mtlbench {command} -m {shown}); " if multirun_ok
           else f"{command} does not sweep (-m); ")
    return (f"{shown} is a comma-separated sweep: {how}for a list write key=[a,b], for a text with a comma "
            f"quote it: key='a,b'")


def expand(command: str, overrides: Sequence[str], multirun: bool, multirun_ok: bool) -> List[List[str]]:
    """The jobs: one list of plain overrides per combination of the swept values."""
    parsed = parse(overrides)
    swept = [(o, a) for o, a in zip(parsed, overrides) if o.is_sweep_override()]
    if swept and not multirun:
        raise UsageError(sweep_hint(command, [a for _, a in swept], multirun_ok))
    if multirun and not multirun_ok:
        raise UsageError(f"{command} does not take -m (nothing to sweep)")
    axes = []
    for o, a in zip(parsed, overrides):
        if o.is_sweep_override():
            key = a.split("=", 1)[0]
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([a])
    return [list(combo) for combo in itertools.product(*axes)]


def base_config(command: str):
    from omegaconf import OmegaConf

    return OmegaConf.create(resources.files("mtlbench.conf").joinpath(f"{command}.yaml").read_text())


def keys_of(node, prefix: str = "") -> List[str]:
    out = []
    for k, v in node.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict) and v:
            out += keys_of(v, f"{prefix}{k}.")
    return out


def unknown_key(command: str, key: str, keys: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    close = close or [k for k in keys if k.split(".")[-1] == key.split(".")[-1]][:1]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key '{key}' for {command}{hint}; {command} keys: {', '.join(keys)}"


def _has(container: dict, dotted: str) -> Tuple[bool, bool]:
    """(the key exists, its parent is a mapping that takes new keys)."""
    node, parts = container, dotted.split(".")
    for i, p in enumerate(parts):
        if not isinstance(node, dict):
            return False, False
        if p not in node:
            return False, i > 0 and i == len(parts) - 1  # a new entry of an existing mapping
        node = node[p]
    return True, False


def resolve(command: str, overrides: Sequence[str], missing: Optional[str] = None, show: bool = False) -> dict:
    """``conf/<command>.yaml`` with ``overrides`` applied, resolved (raises UsageError);
    ``show``: mandatory values may stay missing (``???``, for ``--cfg job``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = base_config(command)
    raw = OmegaConf.to_container(base, resolve=False)
    keys = [k for k in keys_of(raw)]
    for o in parse(overrides):
        if o.is_sweep_override():
            raise UsageError(sweep_hint(command, [o.input_line], False))
        key = o.key_or_group.lstrip("+~")
        exists, open_entry = _has(raw, key)
        if not exists and not open_entry:
            raise UsageError(unknown_key(command, key, [k for k in keys if "." not in k] or keys))
        value = o.value()
        OmegaConf.update(base, key, value, merge=isinstance(value, dict), force_add=open_entry)
    try:
        return OmegaConf.to_container(base, resolve=True, throw_on_missing=not show)
    except OmegaConfBaseException as exc:
        if missing and "Missing mandatory value" in str(exc):
            raise UsageError(missing) from None
        raise UsageError(f"{str(exc).splitlines()[0]}; {command} keys: {', '.join(raw)}") from None


def help_text(spec: Spec) -> str:
    conf = resources.files("mtlbench.conf").joinpath(f"{spec.name}.yaml").read_text()
    flags = ["--help", "--cfg job"] + (["-m (one run per comma-separated value)"] if spec.sweeps else [])
    flags += list(spec.flags)
    return (f"usage: {spec.usage}\n\nflags (anywhere on the line): {', '.join(flags)}\n"
            f"keys (mtlbench/conf/{spec.name}.yaml), key=value:\n\n{conf}")


def dispatch(spec: Spec, args: Sequence[str], main: Callable[[List[str]], int]) -> int:
    """Flags, -m expansion and ``--cfg job`` for a key=value command; ``main(overrides)`` runs one job."""
    from mtlbench.cli.commands import fail

    try:
        a = split(spec, args)
        if a.help:
            print(help_text(spec))
            return 0
        jobs = expand(spec.name, a.overrides, a.multirun, spec.sweeps)
        if a.cfg:
            from omegaconf import OmegaConf

            for k, job in enumerate(jobs, 1):
                if len(jobs) > 1:  # one YAML document per job
                    print(f"--- # job {k}/{len(jobs)}: {' '.join(job)}")
                print(OmegaConf.to_yaml(resolve(spec.name, job, show=True)), end="")
            return 0
    except UsageError as exc:
        return fail(str(exc))
    if len(jobs) == 1:
        return main(jobs[0])
    rc = 0
    for k, job in enumerate(jobs, 1):
        print(f"[mtlbench] {spec.name} job {k}/{len(jobs)}: {' '.join(job)}", flush=True)
        rc = max(rc, main(job))
    sys.stdout.flush()
    return rc
