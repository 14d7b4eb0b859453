"""Benchmarks: ``python -m mtlbench bench <name>``; each prints ratios, its headline last.

Every benchmark finishes in a few minutes by default on 2 CPU cores (``--full``: the long
version) and prints its progress. Options are given either as the benchmark's own flags
(``bench grouping --n 4 7``) or in the one command-line style of every mtlbench command,
``key=value`` (``bench grouping n=[4,7]``), with ``--cfg job`` (the resolved options,
nothing runs) and ``--help``; an unknown key or flag is one line, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import List

# name -> (module with ``main(args) -> int``, what it measures)
BENCHES = {
    "overhead": ("mtlbench.bench.overhead", "trainer vs a bare PyTorch loop (ratio, fixed cost per step)"),
    "balancers": ("mtlbench.bench.balancers", "step time and memory of every balancer vs equal / T backward passes"),
    "archs": ("mtlbench.bench.archs", "step time of each architecture and balancer vs hard sharing + equal"),
    "grouping": ("mtlbench.bench.grouping", "task-grouping selection: time and optimality gap vs n tasks"),
    "tabular": ("mtlbench.bench.tabular", "wall time per epoch vs number of tasks on tabular data"),
    "adashare": ("mtlbench.bench.adashare", "AdaShare search step vs hard sharing / T paths"),
    "throughput": ("mtlbench.bench.throughput", "samples/s and peak memory per method, AMP / layout variants"),
    "affinity": ("mtlbench.bench.affinity", "TAG lookahead affinity (one run) vs trained pair networks"),
    "eval": ("mtlbench.bench.eval", "dense metric updates vs a reference formulation; eval vs train throughput"),
    "faults": ("mtlbench.bench.faults", "SIGKILL campaign: resumed runs and reports vs uninterrupted ones"),
}
PROG = "python -m mtlbench bench"


class BenchArgError(ValueError):
    pass


def usage() -> str:
    rows = "\n".join(f"  {name:11s} {what}" for name, (_, what) in BENCHES.items())
    return (f"usage: {PROG} <name> [key=value | --option value ...] [--full] [--cfg job]   (<name> --help: "
            f"its options)\n{rows}")


def progress(msg: str) -> None:
    """A benchmark's progress line (stdout, flushed; its results and headline follow)."""
    print(f"[bench] {msg}", flush=True)


def _value_tokens(value) -> List[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        raise BenchArgError("benchmark options take numbers, words or lists, not mappings")
    return ["null" if value is None else str(value)]


def to_flags(parser: argparse.ArgumentParser, overrides: List[str], name: str, strict: bool = True):
    """``key=value`` overrides -> (the parser's own ``--key value`` tokens, the overrides that
    name no option: an error when ``strict``, else passed on as they are, e.g. the config
    overrides ``bench affinity`` takes)."""
    from mtlbench.cli.kv import parse, unknown_key

    actions = {a.dest: a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
               and a.dest != "help"}
    out: List[str] = []
    other: List[str] = []
    for o, text in zip(parse(overrides), overrides):
        key = o.key_or_group.replace("-", "_")
        if key not in actions:
            if strict:
                raise BenchArgError(unknown_key(f"bench {name}", o.key_or_group, sorted(actions)))
            other.append(text)
            continue
        act = actions[key]
        if o.is_sweep_override():
            raise BenchArgError(f"{o.input_line}: benchmarks do not sweep; for several values write "
                                f"{o.key_or_group}=[a,b]")
        value = o.value()
        flag = next(s for s in act.option_strings if s.startswith("--"))
        if isinstance(act, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise BenchArgError(f"{o.key_or_group} is a switch: {o.key_or_group}=true or false")
            out += [flag] if value == isinstance(act, argparse._StoreTrueAction) else []
        else:
            out += [flag, *_value_tokens(value)]
    return out, other


@contextlib.contextmanager
def _style(name: str, args: List[str]):
    """While a benchmark parses its argv: key=value overrides become its flags, ``--cfg job``
    prints the resolved options, and a parse error is one line (BenchArgError)."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    rest = [a for a in args if a not in overrides]
    show = "--cfg" in rest
    if show:
        i = rest.index("--cfg")
        del rest[i:i + 2]
    orig_parse, orig_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    orig_error = argparse.ArgumentParser.error
    ours = lambda parser: str(parser.prog).startswith(PROG)  # noqa: E731

    def shown(ns, extra=()):
        if show:
            from omegaconf import OmegaConf

            opts = {k: v for k, v in vars(ns).items() if k != "one"}
            print(OmegaConf.to_yaml({**opts, **({"overrides": list(extra)} if extra else {})}), end="")
            raise SystemExit(0)

    def parse_args(self, argv=None, namespace=None):
        if not ours(self):
            return orig_parse(self, argv, namespace)
        flags, _ = to_flags(self, overrides, name, strict=True)
        ns, extra = orig_known(self, flags + rest, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        shown(ns)
        return ns

    def parse_known_args(self, argv=None, namespace=None):
        if not ours(self):
            return orig_known(self, argv, namespace)
        flags, other = to_flags(self, overrides, name, strict=False)
        ns, extra = orig_known(self, flags + rest + other, namespace)
        shown(ns, extra)
        return ns, extra

    def error(self, message):
        if not ours(self):
            return orig_error(self, message)
        raise BenchArgError(f"bench {name}: {message} (python -m mtlbench bench {name} --help)")

    argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = parse_args, parse_known_args
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = orig_parse, orig_known
        argparse.ArgumentParser.error = orig_error


def main(args: List[str]) -> int:
    from mtlbench.cli.commands import fail
    from mtlbench.cli.kv import UsageError

    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] not in BENCHES:
        return fail(f"unknown benchmark '{args[0]}'; benchmarks: {', '.join(BENCHES)}")
    name = args[0]
    try:
        with _style(name, args[1:]):
            rc = importlib.import_module(BENCHES[name][0]).main(args[1:])
    except (BenchArgError, UsageError) as exc:
        return fail(str(exc))
    except SystemExit as exc:  # --help, --cfg job
        return int(exc.code or 0) if not isinstance(exc.code, str) else fail(exc.code)
    sys.stdout.flush()
    return rc
