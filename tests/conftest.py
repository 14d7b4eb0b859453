"""Shared fixtures.

* ``data_root`` (session, autouse): one MultiMNIST cache for the whole session, passed to
  every run (in-process and subprocess) through ``MTLBENCH_DATA_ROOT``; the previous
  value of the variable is restored at the end.
* ``results_dir``: a fresh, not yet existing results store per test.
* ``run_cli(*overrides)``: ``mtlbench.cli.main(["run", "profile=tiny", ...])`` in-process
  into ``results_dir``; returns the exit code.
* ``make_run_cli(results_dir)``: the same helper bound to another folder (module-scoped
  fixtures use it to share runs between tests).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import mtlbench.cli

# The test machine has 2 CPU cores, often shared: for these tiny models one intra-op thread
# is as fast and avoids OpenMP threads spinning against each other (10x slower steps).
torch.set_num_threads(1)

BASE_ARGS = ("run", "profile=tiny", "trainer.progress=false")


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_root")
    old = os.environ.get("MTLBENCH_DATA_ROOT")
    os.environ["MTLBENCH_DATA_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MTLBENCH_DATA_ROOT", None)
    else:
        os.environ["MTLBENCH_DATA_ROOT"] = old


@pytest.fixture
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


def _bind(results_dir):
    def run_cli(*overrides: str) -> int:
        return mtlbench.cli.main([*BASE_ARGS, f"results_dir={results_dir}", *overrides])

    return run_cli


@pytest.fixture(scope="session")
def make_run_cli():
    return _bind


@pytest.fixture
def run_cli(results_dir):
    return _bind(results_dir)
