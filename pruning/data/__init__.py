"""Task data for the engine: train/dev examples from GLUE or local files, and the metrics that score them.

    from pruning.data import load_task, compute_metrics
    data = load_task(TaskSpec(glue="mrpc", data_dir="glue"), seed=0)
    scores = compute_metrics(data.metric_names, predictions, labels)  # {"f1": ..., "accuracy": ...}

numpy only: the service imports this to validate uploads without torch.
"""

from .loaders import Completion, DataError, Example, TaskData, load_task
from .metrics import compute_metrics

__all__ = ["Completion", "DataError", "Example", "TaskData", "compute_metrics", "load_task"]
