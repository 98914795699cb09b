"""Class-incremental streams: a seeded class order cut into tasks, each with train/val/test.

Labels inside a stream are positions in the class order (task 0's classes are 0..k-1), so a
growing head's output j always means ``class_order[j]``. The validation split is carved from
the training data; the test split is never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CompactCLError
from .datasets import DatasetSplits, TensorData

__all__ = ["Task", "Stream", "class_incremental"]


@dataclass
class Task:
    index: int
    classes: list[int]  # original dataset class ids, in stream order
    labels: list[int]  # the stream labels of those classes (positions in the class order)
    train: TensorData
    val: TensorData
    test: TensorData


@dataclass
class Stream:
    tasks: list[Task]
    class_order: list[int]
    dataset: DatasetSplits

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)


def _task_sizes(num_classes: int, tasks: int, classes_per_task: int | None, first_task_classes: int | None,
                all_classes: bool = True) -> list[int]:
    if tasks < 1:
        raise CompactCLError(f"data.tasks must be >= 1, got {tasks}")
    first = first_task_classes or 0
    if classes_per_task is None:
        rest = num_classes - first if first else num_classes
        n_rest = tasks - 1 if first else tasks
        if n_rest <= 0 or rest % n_rest:
            raise CompactCLError(f"cannot split {num_classes} classes into {tasks} equal tasks; "
                                 "set data.classes_per_task (and data.first_task_classes for a larger first task)")
        classes_per_task = rest // n_rest
    if classes_per_task < 1:
        raise CompactCLError(f"data.classes_per_task must be >= 1, got {classes_per_task}")
    sizes = ([first] + [classes_per_task] * (tasks - 1)) if first else [classes_per_task] * tasks
    if sum(sizes) > num_classes:
        raise CompactCLError(f"the stream asks for {sum(sizes)} classes ({sizes}) but the dataset has {num_classes}; "
                             "lower data.tasks or data.classes_per_task")
    if all_classes and sum(sizes) < num_classes:  # never drop classes silently (e.g. --set data.tasks=3 on 5 x 2)
        rest = num_classes - first
        fit = f"data.tasks={rest // classes_per_task + (1 if first else 0)} for all of them, " \
            if not rest % classes_per_task else ""
        raise CompactCLError(
            f"data.tasks={tasks} x data.classes_per_task={classes_per_task}"
            f"{f' (with data.first_task_classes={first})' if first else ''} covers {sum(sizes)} of the dataset's "
            f"{num_classes} classes and would leave {num_classes - sum(sizes)} out; set {fit}change data.tasks / "
            f"data.classes_per_task, or set data.all_classes=false to learn only the first {sum(sizes)} "
            "classes of the order")
    return sizes


def _split_val(data: TensorData, fraction: float, rng: np.random.Generator) -> tuple[TensorData, TensorData]:
    """Per-class stratified split of ``data`` into (train, val)."""
    y = data.y.numpy()
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * fraction)) if fraction > 0 else 0
        n_val = min(max(n_val, 1 if fraction > 0 else 0), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return data.subset(np.sort(np.concatenate(train_idx))), data.subset(np.sort(np.concatenate(val_idx)))


def class_incremental(dataset: DatasetSplits, tasks: int, classes_per_task: int | None = None,
                      first_task_classes: int | None = None, seed: int = 0, val_fraction: float = 0.1,
                      class_order: list[int] | None = None, all_classes: bool = True) -> Stream:
    """Cut ``dataset`` into ``tasks`` class-incremental tasks.

    ``first_task_classes`` gives a larger first task (the "B50" protocol: half the classes
    first, then equal steps). The class order is a permutation seeded by ``seed`` unless given.
    A stream that covers fewer classes than the dataset holds is an error unless ``all_classes``
    is False (then the first classes of the order are used).

    >>> from compactcl.data.datasets import load_dataset
    >>> s = class_incremental(load_dataset("digits"), tasks=5, seed=0)
    >>> [len(t.classes) for t in s]
    [2, 2, 2, 2, 2]
    """
    if not 0 <= val_fraction < 1:
        raise CompactCLError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    sizes = _task_sizes(dataset.num_classes, tasks, classes_per_task, first_task_classes, all_classes)
    rng = np.random.default_rng(seed)
    if class_order is None:
        class_order = [int(c) for c in rng.permutation(dataset.num_classes)]
    elif sorted(class_order) != list(range(dataset.num_classes)):
        raise CompactCLError(f"data.class_order must be a permutation of 0..{dataset.num_classes - 1}")
    position = torch.empty(dataset.num_classes, dtype=torch.long)
    position[torch.tensor(class_order)] = torch.arange(dataset.num_classes)

    def relabel(d: TensorData) -> TensorData:
        return d.relabel(position[d.y])

    train_all, test_all = relabel(dataset.train), relabel(dataset.test)
    out, start = [], 0
    for index, size in enumerate(sizes):
        labels = list(range(start, start + size))
        lab = torch.tensor(labels)
        train = train_all.subset(torch.isin(train_all.y, lab).nonzero().flatten())
        test = test_all.subset(torch.isin(test_all.y, lab).nonzero().flatten())
        if len(train) == 0 or len(test) == 0:
            raise CompactCLError(f"task {index} (classes {[class_order[i] for i in labels]}) has no "
                                 f"{'training' if not len(train) else 'test'} images")
        train, val = _split_val(train, val_fraction, rng)
        out.append(Task(index, [class_order[i] for i in labels], labels, train, val, test))
        start += size
    return Stream(out, list(class_order), dataset)
