"""Small helpers shared by test modules (tests/ is on sys.path under pytest)."""


def run_metrics(task, batches):
    """Feed ``(pred, target, mask)`` batches to a fresh set of the task's metrics; their values."""
    ms = task.metrics()
    for pred, target, mask in batches:
        for m in ms:
            m.update(pred, target, mask)
    return {m.name: m.compute() for m in ms}
