"""Learners: one file each in this package, found and registered on import.

``create_learner(name, **options)``; ``list_learners()``; the recipe's ``learner:`` section is
validated by the chosen learner's ``Options``.
"""

import importlib
import pkgutil

from .base import (LEARNERS, DistillOptions, Learner, LearnerOptions, LearnerState, create_learner, learner_class,
                   learner_options, list_learners, pretrained_state, register_learner, shift_task)

# Every module beside base.py is a learner file: importing it registers it.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LEARNERS", "DistillOptions", "Learner", "LearnerOptions", "LearnerState", "create_learner",
           "learner_class", "learner_options", "list_learners", "pretrained_state", "register_learner", "shift_task"]
