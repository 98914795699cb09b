"""Time bounds that hold on a busy machine. Work is counted in this process's CPU seconds (all its
threads): another job taking the cores slows the wall clock, not the work, and a timing check
must not fail for that. Wall time stays bounded too, loosely, so a call that waits without
working (a blocked read) is still caught."""

from __future__ import annotations

import time

WALL_FACTOR = 6.0  # wall time allowed per CPU second of the bound: a 2-core box shared with 5 jobs


class Clock:
    """Started on creation; ``within(s)``: at most ``s`` CPU seconds and ``WALL_FACTOR * s`` wall seconds."""

    def __init__(self) -> None:
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    @property
    def cpu(self) -> float:
        return time.process_time() - self._cpu

    @property
    def wall(self) -> float:
        return time.perf_counter() - self._wall

    def within(self, seconds: float) -> bool:
        return self.cpu < seconds and self.wall < WALL_FACTOR * seconds

    def __str__(self) -> str:
        return f"{self.cpu:.1f} s CPU / {self.wall:.1f} s wall"
