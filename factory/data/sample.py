"""The records every stage passes around: a reference to a sample on disk, and a loaded sample.

A ``SampleRef`` is cheap (paths and metadata only) so planners can list a whole dataset; a
``Sample`` holds decoded arrays. The label *files* are kept by path because the factory copies
them byte for byte into its shards (never decoded and re-encoded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Label kinds a sample may carry. Keys of ``SampleRef.paths`` besides "image".
LABEL_KINDS = (
    "labelids",
    "instanceids",
    "labeltrainids",
    "color",
    "polygons",
    "disparity",
    "boxes3d",
    "camera",
)

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class DataError(ValueError):
    """Bad input data. The message names the file, what is wrong and how to fix it."""

    def __init__(self, path: str | Path, problem: str, fix: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        msg = f"{path}: {problem}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


def check_key(key: str) -> str:
    """Keys become webdataset member names: no '.', '/', '..' or spaces (see DESIGN.md)."""
    if not key or not _KEY_RE.match(key):
        raise ValueError(f"sample key {key!r} is unsafe: only letters, digits, '_' and '-' are allowed")
    return key


@dataclass(frozen=True)
class BadSample:
    """A file a reader skipped (``on_error="skip"``), and why."""

    path: Path
    reason: str


@dataclass
class ReadResult:
    """What a lister found: the good sample refs and the skipped files with reasons."""

    refs: list[SampleRef]
    bad: list[BadSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives. ``paths['image']`` always exists; labels are optional."""

    key: str
    paths: dict[str, Path]
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, split, city/sequence, weather

    @property
    def label_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in LABEL_KINDS if k in self.paths)


@dataclass
class Sample:
    """A decoded sample.

    image: HxWx3 uint8 RGB. semantic: HxW uint8 Cityscapes labelIds (ACDC: labelIds when present,
    else None and ``trainids`` holds labelTrainIds). instance: HxW int32 Cityscapes instanceIds
    (id*1000+n for instances). disparity: HxW uint16 raw Cityscapes encoding ((d-1)/256 px,
    0 = invalid). boxes3d / camera: the parsed JSON files.
    """

    key: str
    image: np.ndarray
    semantic: np.ndarray | None = None
    trainids: np.ndarray | None = None
    instance: np.ndarray | None = None
    disparity: np.ndarray | None = None
    boxes3d: dict[str, Any] | None = None
    camera: dict[str, Any] | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def label_size(self) -> tuple[int, int]:
        """(height, width) of the labels: the image's, or the ``label_size`` recorded by a
        synthetic shard sample that was generated smaller than its labels."""
        recorded = self.meta.get("label_size")
        return (int(recorded[0]), int(recorded[1])) if recorded else self.size
