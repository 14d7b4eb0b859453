"""mtlbench: a fair benchmark suite for multi-task learning methods."""
import os as _os

__version__ = "0.1.0"

# In a source checkout (and an editable install) the method and dataset files live in
# the top-level folders methods/ and datasets/ beside this package; an installed wheel
# has them as mtlbench/methods and mtlbench/datasets. Those folders carry no
# __init__.py, so they are never a top-level package that could shadow HuggingFace's
# `datasets`: they are reachable only as mtlbench.methods / mtlbench.datasets.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "methods")) and _os.path.isdir(
    _os.path.join(_checkout, "methods")
):
    __path__.append(_checkout)


def load_runs(results_dir="results", status=None):
    """All runs under ``results_dir`` as a tidy DataFrame (see mtlbench.results.store)."""
    from mtlbench.results.store import load_runs as _load_runs

    return _load_runs(results_dir, status=status)


def load_history(results_dir="results"):
    """Every run's per-epoch rows (train losses, val metrics, lr, balancer weights, steps...)
    as one DataFrame (see mtlbench.engine.loggers)."""
    from mtlbench.engine.loggers import load_history as _load_history

    return _load_history(results_dir)
