"""Data: datasets (a registry: ``register_dataset``), streams of tasks, the exemplar memory.

Every module in this package is imported here, so a dataset in a new file registers itself.
"""

import importlib
import pkgutil

from .datasets import (DatasetSplits, LazyImages, TensorData, augment_batch, from_arrays, lazy_folder, list_datasets,
                       load_dataset, read_idx)
from .memory import ExemplarMemory
from .stream import Stream, Task, class_incremental

__all__ = ["LazyImages", "augment_batch", "lazy_folder", "DatasetSplits", "TensorData", "from_arrays", "list_datasets",
           "load_dataset", "read_idx", "ExemplarMemory", "Stream", "Task", "class_incremental"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
