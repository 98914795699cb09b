"""The bottom of the training stack: one loop (with hooks) and plain loss functions.

Learners and compression both train through :func:`train`; neither imports the other.
"""

from .loop import LossFn, TrainConfig, TrainHooks, accuracy, predict, train

__all__ = ["LossFn", "TrainConfig", "TrainHooks", "accuracy", "predict", "train"]
