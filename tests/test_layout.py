"""Packaging and layout rules."""
import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("mtlbench", "methods", "datasets")


def _under_repo(path) -> bool:
    try:
        Path(path).resolve().relative_to(REPO)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name", ["datasets", "methods"])
def test_no_top_level_package_from_the_repo(name, monkeypatch):
    """From the repo root (on sys.path first, as with `python -c` / `python -m` there), the
    repo's folder is never a regular top-level package: at most an implicit namespace
    portion, which any regular package of that name (HuggingFace `datasets`) takes
    precedence over."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    if spec.origin is not None:  # a regular package or module: must not be ours
        assert not _under_repo(spec.origin), spec
    else:  # a namespace package: no code of ours can be imported as `<name>`
        for loc in spec.submodule_search_locations:
            if _under_repo(loc):
                assert not (Path(loc) / "__init__.py").exists()


@pytest.mark.parametrize("name", ["datasets", "methods"])
def test_a_real_package_of_that_name_wins(name, tmp_path, monkeypatch):
    """A regular package installed anywhere on sys.path (here: after the repo root) is the
    one imported, e.g. HuggingFace `datasets`."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO))  # repo root first
    monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.find_spec(name)
    assert spec is not None and Path(spec.origin).resolve() == (pkg / "__init__.py").resolve()


@pytest.mark.parametrize("folder", ["methods", "datasets"])
def test_plugin_folders_have_no_init(folder):
    assert (REPO / folder).is_dir()
    assert not (REPO / folder / "__init__.py").exists()


def test_subpackages_import():
    methods = importlib.import_module("mtlbench.methods")
    datasets = importlib.import_module("mtlbench.datasets")
    assert importlib.import_module("mtlbench.methods.hard_sharing")
    assert importlib.import_module("mtlbench.datasets.multimnist")
    assert methods.__name__ == "mtlbench.methods" and datasets.__name__ == "mtlbench.datasets"


def _source_files():
    files = [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]
    assert len(files) > 10
    return files


def test_no_module_imports_torchvision():
    pattern = re.compile(r"^\s*(import\s+torchvision\b|from\s+torchvision\b)")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in _source_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.match(line)]
    assert offenders == []


def test_torch_requirement_has_an_upper_bound():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_reqs = [r for r in project["dependencies"] if re.match(r"^torch\b(?![\w-])", r)]
    assert len(torch_reqs) == 1, project["dependencies"]
    assert "<" in torch_reqs[0]


def test_readme_architecture_lists_every_module():
    """README's architecture section names every framework module (by file name within its
    folder's line) and every subpackage."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture"):readme.index("## Adding a method")]
    missing = []
    for p in sorted((REPO / "mtlbench").rglob("*.py")):
        rel = p.relative_to(REPO / "mtlbench")
        if p.name == "__init__.py" or rel.parts[0] == "conf" or p.name == "__main__.py":
            continue
        if p.stem not in section:
            missing.append(str(rel))
    for sub in (p for p in (REPO / "mtlbench").iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if f"{sub.name}/" not in section:
            missing.append(sub.name + "/")
    assert not missing, f"README architecture section misses {missing}"


def test_framework_files_stay_small():
    big = [f"{p.relative_to(REPO)} ({n} lines)" for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 420]
    assert not big, big
