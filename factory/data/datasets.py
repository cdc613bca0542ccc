"""One entry point from a config to a list of samples, whatever the dataset kind.

A job's YAML names its data with a ``DatasetConfig``; ``list_samples`` dispatches to the
Cityscapes or ACDC lister (or the shard reader) and applies ``limit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from factory.config import check
from factory.data.acdc import WEATHERS, list_acdc
from factory.data.cityscapes import list_cityscapes
from factory.data.sample import ReadResult
from factory.data.shards import list_shards


@dataclass
class DatasetConfig:
    """Which samples to read.

    kind: cityscapes | acdc | shards.
    root: the dataset folder (Cityscapes: holds leftImg8bit/; ACDC: holds rgb_anon/; shards: the
      shard folder); ``make city`` writes the procedural city under data/procedural/.
    split: train | val | test (or any folder name).
    weathers: ACDC weathers to read.
    cities: Cityscapes cities (empty = all).
    limit: keep the first N refs after sorting (0 = all).
    on_error: raise or skip bad samples.
    """

    kind: Literal["cityscapes", "acdc", "shards"] = "cityscapes"
    root: Path = Path("data/procedural/cityscapes")  # make city
    split: str = "train"
    weathers: list[str] = field(default_factory=lambda: list(WEATHERS))
    cities: list[str] = field(default_factory=list)
    limit: int = 0
    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        check(bool(self.split), "split", "must be a non-empty folder name such as train or val")
        check(self.limit >= 0, "limit", f"must be >= 0 (0 = all), got {self.limit}")
        unknown = [w for w in self.weathers if w not in WEATHERS]
        check(not unknown, "weathers", f"unknown {unknown}; allowed: {list(WEATHERS)}")


def list_samples(cfg: DatasetConfig) -> ReadResult:
    """List the samples ``cfg`` names (sorted, at most ``cfg.limit`` when set)."""
    if cfg.kind == "cityscapes":
        result = list_cityscapes(cfg.root, cfg.split, cities=cfg.cities or None, on_error=cfg.on_error)
    elif cfg.kind == "acdc":
        result = list_acdc(cfg.root, cfg.split, weathers=tuple(cfg.weathers), on_error=cfg.on_error)
    else:
        result = list_shards(cfg.root, split=cfg.split, on_error=cfg.on_error)
    if cfg.limit:
        result = ReadResult(result.refs[: cfg.limit], result.bad)
    return result


__all__ = ["DatasetConfig", "list_samples"]
