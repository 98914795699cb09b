from .datasets import DatasetSplits, TensorData, from_arrays, list_datasets, load_dataset, read_idx
from .memory import ExemplarMemory
from .stream import Stream, Task, class_incremental

__all__ = ["DatasetSplits", "TensorData", "from_arrays", "list_datasets", "load_dataset", "read_idx",
           "ExemplarMemory", "Stream", "Task", "class_incremental"]
