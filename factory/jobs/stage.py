"""The sharded stage: what every job runs, and all an executor knows about it.

Why this shape (learnt from NeMo Curator's ProcessingStage): a job is a list of shards and a
stage turns one shard into one output (a tar + a manifest part, or a result the driver
gathers). The stage is a plain class - no Ray - so it runs and is tested in-process; the
executors in ``factory.jobs.executors`` run the same object on a Ray actor pool or under Ray
Data. A stage is built on the driver from its config (cheap, picklable), shipped to a
worker, and ``setup`` there loads its models once; ``process_shard`` may then be called for
many shards. ``process_shard`` must be retry-safe: run twice on the same task, it writes the
same bytes (shards are written atomically and are a pure function of the plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage reserves. ``gpus`` > 0 asks for GPU workers; on a cluster
    without GPUs an executor falls back to CPU workers (the offline world, CI)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpus > 0:
            raise ValueError(f"Resources.cpus must be > 0, got {self.cpus}")
        if self.gpus < 0:
            raise ValueError(f"Resources.gpus must be >= 0, got {self.gpus}")


@dataclass(frozen=True)
class ShardTask:
    """One unit of work, of atomic output and of resume: shard ``name`` holds ``items``.

    ``payload`` is what the stage needs beyond the items (e.g. per-image PCA sample counts).
    """

    name: str
    items: tuple[Any, ...]
    payload: Any = None

    def __len__(self) -> int:
        return len(self.items)


@runtime_checkable
class ShardStage(Protocol):
    """A Ray-free stage: declared resources, ``setup`` once per worker, one call per shard."""

    name: str

    @property
    def resources(self) -> Resources: ...

    def setup(self) -> None:
        """Load models (once per worker). Raising here is a setup error, not a dead worker."""

    def process_shard(self, task: ShardTask) -> Any:
        """Process one shard; the result goes back to the driver (keep it small)."""

    def teardown(self) -> None:
        """Release what ``setup`` took (thread pools, GPU memory)."""


def items_done(result: Any, task: ShardTask) -> int:
    """How many items a finished shard accounts for (for progress bars): the stage's
    ``result.items`` when it reports one, else the task's size."""
    n = getattr(result, "items", None)
    return n if isinstance(n, int) else len(task)


__all__ = ["Resources", "ShardStage", "ShardTask", "items_done"]
