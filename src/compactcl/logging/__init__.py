"""Optional run logs for dashboards. Nothing here is imported by ``import compactcl``."""

from .tensorboard import TensorBoardLogger, accuracy_matrix

__all__ = ["TensorBoardLogger", "accuracy_matrix"]
