"""Knowledge distillation: losses (Hinton KD, hints), ``distill()`` and a student registry."""

from .distill import FEATURES, DistillConfig, distill
from ...engine.losses import hint_loss, kd_ce_loss, kd_loss, make_adapter, old_class_kd
from .students import STUDENTS, create_student, list_students, register_student

__all__ = ["kd_loss", "kd_ce_loss", "old_class_kd", "hint_loss", "make_adapter", "DistillConfig", "distill",
           "FEATURES", "create_student", "list_students", "register_student", "STUDENTS"]
