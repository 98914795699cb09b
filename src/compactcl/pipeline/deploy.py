"""The deployer contract: after every task, working model -> the model a device runs.

The run loop hands a :class:`Deployer` the working model and a typed :class:`DeployContext`;
it gets back a :class:`Deployed` (model, the file the budget counts, a report for
metrics.json). A deployer declares every file it writes into a task folder (``files``, ``state_files``
and the patterns ``extra_files``), so the run loop mirrors exactly ``files`` into ``final/``, clears a
killed attempt's before a task is redone, and touches no other; what it
carries from task to task (a student that keeps growing) it restores from a finished task's
folder in :meth:`Deployer.resume`, so a resumed run continues exactly where it stopped.

>>> class Copy(Deployer):  # the smallest deployer: the working model, saved as it is
...     files = ("deployed.safetensors",)
...     note = "deployed = working"
...     def deploy(self, working, ctx):
...         path = ctx.task_dir / self.files[0]
...         save_checkpoint(working, path, ctx.meta)
...         return Deployed(working, path, {})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import nn

from ..data.datasets import TensorData
from ..data.memory import ExemplarMemory
from ..data.stream import Task
from ..models.checkpoint import save_checkpoint

__all__ = ["DeployContext", "Deployed", "Deployer", "IdentityDeployer"]


def _silent(_line: str) -> None:
    pass


@dataclass(frozen=True)
class DeployContext:
    """What a deployer may use after task ``task.index``."""

    task: Task
    seen: list[Task]  # every task so far, this one last: validation for choices, test for export checks
    memory: ExemplarMemory  # the learner's exemplar memory, already updated with this task's exemplars
    kept: TensorData | None  # all the learner keeps of the tasks so far (Learner.kept_data); None: nothing
    meta: dict[str, Any]  # header metadata for every file written for this task (stream, classes, recipe)
    input_shape: tuple[int, int, int]  # (C, H, W)
    task_dir: Path  # RUN/tasks/NN: the only folder a deployer writes to
    device: str  # the run's device: training steps run there; ONNX export and latency on the CPU
    seed: int  # the recipe's seed
    learner: str = ""  # its name, for messages
    log: Callable[[str], None] = _silent  # one line per long step (the run's log; silent by default)

    def seen_val(self) -> TensorData:
        return TensorData.cat([t.val for t in self.seen])

    def seen_test(self) -> TensorData:
        return TensorData.cat([t.test for t in self.seen])


@dataclass
class Deployed:
    model: nn.Module  # scored on every seen task's test split
    path: Path  # the file the budget counts (its size is ``bytes.deployed``)
    report: dict[str, Any] = field(default_factory=dict)  # recorded as the task's ``deploy`` entry


class Deployer:
    """Base class. ``files``: the names :meth:`deploy` may write in ``ctx.task_dir`` for a device
    (mirrored into ``final/``); ``state_files``: what it writes there to carry on after a resume;
    ``extra_files``: glob patterns of any other file it writes there (measurements; never mirrored);
    ``note``: one line for metrics.json saying what "deployed" means."""

    files: ClassVar[tuple[str, ...]] = ()
    state_files: ClassVar[tuple[str, ...]] = ()
    extra_files: ClassVar[tuple[str, ...]] = ()
    note: ClassVar[str] = ""

    def deploy(self, working: nn.Module, ctx: DeployContext) -> Deployed:
        raise NotImplementedError

    def written_in(self, task_dir: Path) -> list[Path]:
        """The files of ``task_dir`` this deployer declares as its own (whether or not this attempt wrote them)."""
        named = [task_dir / name for name in (*self.files, *self.state_files)]
        matched = [p for pattern in self.extra_files for p in sorted(task_dir.glob(pattern))]
        return [p for p in named if p.exists()] + matched

    def resume(self, task_dir: Path) -> None:
        """Restore what this deployer carries between tasks from the folder of the last finished
        task (called once before a resumed run goes on). Nothing by default."""


class IdentityDeployer(Deployer):
    """Until a `compress:` section is given, the deployed model is the working model, saved as is."""

    files = ("deployed.safetensors",)
    note = "no compress section: deployed = working (fp32 checkpoint)"

    def deploy(self, working: nn.Module, ctx: DeployContext) -> Deployed:
        path = ctx.task_dir / self.files[0]
        save_checkpoint(working, path, ctx.meta)
        return Deployed(working, path, {"note": self.note})
