from .datasets import (DatasetSplits, LazyImages, TensorData, augment_batch, from_arrays, lazy_folder, list_datasets,
                       load_dataset, read_idx)
from . import cifar  # registers cifar10, cifar100
from .memory import ExemplarMemory
from .stream import Stream, Task, class_incremental

__all__ = ["LazyImages", "augment_batch", "lazy_folder", "DatasetSplits", "TensorData", "from_arrays", "list_datasets", "load_dataset", "read_idx",
           "ExemplarMemory", "Stream", "Task", "class_incremental"]
