"""Model selection rules of ``Trainer.fit`` (``trainer.selection``) beyond ``last``:

* ``best``: the epoch with the lowest mean over tasks of val loss / that task's
  first-epoch val loss; its weights are restored before the test evaluation;
* ``last_k_mean``: val / test metrics and losses averaged over the last k epochs
  (``trainer.selection_k``), the protocol of the papers that report such means.
"""
from __future__ import annotations

import copy
import math
from typing import Dict

from mtlbench.core.procedure import FitResult
from mtlbench.engine.session import Session


def last_k_mean(s: Session, k: int, epochs: int) -> FitResult:
    """Means of the last k epochs' val / test metrics and losses (from ``s.history``)."""
    rows = s.history[-min(k, epochs):]

    def mean(key):
        first = rows[0][key]
        if all(not isinstance(v, dict) for v in first.values()):
            return {t: sum(r[key][t] for r in rows) / len(rows) for t in first}
        return {t: {m: sum(r[key][t][m] for r in rows) / len(rows) for m in ms} for t, ms in first.items()}

    extra = {"selection": {"k": len(rows), "epochs": [int(r["epoch"]) for r in rows]}}
    return FitResult(s.history, epochs, mean("val"), mean("val_loss"), mean("test"), mean("test_loss"),
                     wall_time_s=s.wall_time(), extra=extra)


def track_best(s: Session, epoch: int, val_loss: Dict[str, float]) -> None:
    """Keep the weights of the epoch with the best normalised mean val loss in ``s.state``."""
    first = s.state.setdefault("first_val", dict(val_loss))
    score = sum(val_loss[t] / first[t] if first[t] > 0 else val_loss[t] for t in val_loss) / len(val_loss)
    if score < s.state.get("best_score", math.inf):
        s.state.update(best_score=score, best_epoch=epoch, best_state=copy.deepcopy(s.model.state_dict()))
