from . import strategies  # noqa: F401 - registers the learners
from .base import LEARNERS, Learner, LearnerState, create_learner, list_learners, register_learner
from .loop import TrainConfig, accuracy, predict, train

__all__ = ["LEARNERS", "Learner", "LearnerState", "create_learner", "list_learners", "register_learner",
           "TrainConfig", "accuracy", "predict", "train"]
