"""Every run-config value checked at the boundary, before anything is written.

``check_run_config(c)`` checks the generic keys (``seed``, the store paths, ``force`` /
``resume``, every ``trainer.*`` key, the generic ``dataset.*`` keys) and raises a
``ValueError`` whose one line names the key, the allowed range or type and the value
(``trainer.grad_clip must be a number > 0 or null (got -1)``). ``preflight(c, data)`` then
builds the procedure, the balancer and the model once (the RNG states restored after), so
a bad value of theirs fails too before a run folder exists. ``engine/run.py`` calls both
before it creates the run folder: a configuration or data error writes nothing under
``results_dir``.
"""
from __future__ import annotations

import math
import re

BOOL_KEYS = ("check_finite", "sync_batchnorm", "find_unused_parameters", "channels_last")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fail(key: str, rule: str, value) -> ValueError:
    return ValueError(f"{key} must be {rule} (got {value!r})")


def check_bool(key: str, value) -> None:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)


def check_int(key: str, value, low: int = 1, none: bool = False) -> None:
    if value is None and none:
        return
    if not _is_int(value) or value < low:
        raise _fail(key, f"an integer >= {low}{' or null' if none else ''}", value)


def check_num(key: str, value, low: float = 0.0, strict: bool = True, none: bool = False) -> None:
    if value is None and none:
        return
    if not _is_num(value) or (value <= low if strict else value < low):
        raise _fail(key, f"a number {'>' if strict else '>='} {low:g}{' or null' if none else ''}", value)


def check_path(key: str, value, none: bool = False) -> None:
    if value is None and none:
        return
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f"a non-empty path{' or null' if none else ''}", value)


def check_target(key: str, node) -> None:
    """A Hydra ``_partial_`` node whose ``_target_`` imports (e.g. torch.optim.Adam)."""
    from hydra._internal.utils import _locate  # hydra.utils.get_method also logs the error

    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise _fail(key, "a config node with a _target_ (e.g. {_target_: torch.optim.Adam, _partial_: true})", node)
    try:
        if not callable(_locate(node["_target_"])):
            raise TypeError
    except Exception:
        raise ValueError(f"{key}._target_ must name an importable class or function, e.g. torch.optim.SGD "
                         f"(got {node['_target_']!r})") from None


def check_device(value) -> None:
    import torch

    if not isinstance(value, str) or not DEVICE.match(value):
        raise _fail("trainer.device", "auto, cpu, cuda, cuda:<index> or mps", value)
    if value.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= n:
            raise ValueError(f"trainer.device={value} but this machine has {n} CUDA device(s); "
                             f"use trainer.device=cpu or auto")
    if value == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("trainer.device=mps but MPS is not available here; use trainer.device=cpu or auto")


def check_trainer(t: dict) -> None:
    for key in ("epochs", "batch_size"):
        check_int(f"trainer.{key}", t.get(key))
    for key in ("eval_batch_size", "max_steps_per_epoch", "checkpoint_every_steps"):
        check_int(f"trainer.{key}", t.get(key), none=True)
    check_num("trainer.grad_clip", t.get("grad_clip"), none=True)
    for key in BOOL_KEYS:
        if key in t:
            check_bool(f"trainer.{key}", t[key])
    if t.get("progress") not in ("auto", True, False):
        raise _fail("trainer.progress", "auto, true or false", t.get("progress"))
    check_device(t.get("device", "auto"))
    opt = t.get("optimizer")
    if opt is not None:
        check_target("trainer.optimizer", opt)
        if "lr" in opt:
            check_num("trainer.optimizer.lr", opt["lr"])
        for key in ("weight_decay", "momentum", "eps"):
            if key in opt:
                check_num(f"trainer.optimizer.{key}", opt[key], strict=False)
    if t.get("scheduler") is not None:
        check_target("trainer.scheduler", t["scheduler"])


def check_tasks(value) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        hint = f"[{value}]" if isinstance(value, str) and value else "[left,right]"
        raise _fail("dataset.tasks", f"a non-empty list of task names, e.g. {hint}, or null for all", value)
    if len(set(value)) != len(value):
        raise _fail("dataset.tasks", "a list of distinct task names", value)


def check_dataset(d: dict) -> None:
    check_path("dataset.root", d.get("root"), none=True)
    check_int("dataset.split_seed", d.get("split_seed"), low=0, none=True)
    check_int("dataset.limit", d.get("limit"), none=True)
    check_tasks(d.get("tasks"))


def check_run_config(c: dict) -> None:
    """Raise a one-line ValueError for the first bad generic value of the run config ``c``."""
    check_int("seed", c.get("seed"), low=0)
    if c["seed"] >= 2**63:
        raise _fail("seed", "an integer in [0, 2^63)", c["seed"])
    check_path("results_dir", c.get("results_dir"))
    check_path("reports_dir", c.get("reports_dir", "reports"))
    check_path("data_root", c.get("data_root"), none=True)
    for key in ("force", "resume"):
        check_bool(key, c.get(key, False))
    if c.get("role") not in (None, "main", "candidate"):
        raise _fail("role", "main or candidate", c.get("role"))
    check_trainer(c["trainer"])
    check_dataset(c["dataset"])


def preflight(c: dict, data):
    """The run's procedure, after building its balancer and model once (RNG states restored),
    so their settings fail before anything is written."""
    from mtlbench.core.registry import PROCEDURES
    from mtlbench.engine.checkpoint import rng_state, set_rng_state
    from mtlbench.engine.context import kwargs_of, make_context

    procedure = PROCEDURES.get(c["procedure"]["name"])(**kwargs_of(c["procedure"]))
    state = rng_state()
    try:
        ctx = make_context(c, data)
        ctx.build_balancer(data.task_names)
        ctx.build_model(data.tasks)
    finally:
        set_rng_state(state)
    return procedure
