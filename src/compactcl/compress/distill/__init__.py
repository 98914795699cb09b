from .losses import hint_loss, kd_loss, old_class_kd

__all__ = ["kd_loss", "old_class_kd", "hint_loss"]
