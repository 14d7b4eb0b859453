"""Task kinds: each a loss, a head and its metrics (``mtlbench.core.tasks`` is the interface)."""
from mtlbench.core.tasks import Metric, Task, masked_mean
from mtlbench.tasks.classification import Accuracy, ClassificationHead, ClassificationTask
from mtlbench.tasks.dense import DepthTask, L1Task, NormalTask, SegmentationTask
from mtlbench.tasks.tabular import BinaryTask, RegressionTask

__all__ = ["Task", "Metric", "masked_mean", "Accuracy", "ClassificationHead", "ClassificationTask",
           "SegmentationTask", "DepthTask", "NormalTask", "L1Task", "RegressionTask", "BinaryTask"]
