"""One entry point from a config to a list of samples, whatever the dataset kind.

A job's YAML names its data with a ``DatasetConfig``; ``list_samples`` dispatches to the
Cityscapes or ACDC lister (or the shard reader) and applies ``limit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from factory.config import check
from factory.data.acdc import WEATHERS, list_acdc
from factory.data.cityscapes import list_cityscapes
from factory.data.sample import BadSample, DataError, ReadResult
from factory.data.shards import list_shards
from factory.data.tree import DEFAULT_CACHE, LOCAL, ListedTree, Tree
from factory.storage import location


@dataclass
class DatasetConfig:
    """Which samples to read.

    kind: cityscapes | acdc | shards.
    root: the dataset folder (Cityscapes: holds leftImg8bit/; ACDC: holds rgb_anon/; shards: the
      shard folder); ``make city`` writes the procedural city under data/procedural/. For
      cityscapes and acdc it may be an fsspec URI (``s3://bucket/cityscapes``): listed once,
      each reference's files fetched into ``cache`` on the node that reads them
      (factory.data.tree).
    split: train | val | test (or any folder name).
    weathers: ACDC weathers to read.
    cities: Cityscapes cities (empty = all).
    limit: keep the first N refs after sorting (0 = all).
    on_error: raise or skip bad samples.
    storage_options: passed to fsspec for a URI root (endpoint_url, profile, ...; or leave the
      credentials to the environment).
    cache: the node-local folder a URI root's files are fetched into.
    """

    kind: Literal["cityscapes", "acdc", "shards"] = "cityscapes"
    root: Path | str = Path("data/procedural/cityscapes")  # make city; or an fsspec URI
    split: str = "train"
    weathers: list[str] = field(default_factory=lambda: list(WEATHERS))
    cities: list[str] = field(default_factory=list)
    limit: int = 0
    on_error: Literal["raise", "skip"] = "raise"
    storage_options: dict[str, Any] = field(default_factory=dict)
    cache: Path = DEFAULT_CACHE

    def __post_init__(self) -> None:
        self.root = location(self.root)
        check(
            isinstance(self.root, Path) or self.kind != "shards",
            "root",
            f"{self.root} is a URI: kind=shards reads a local folder here (fix: cityscapes or acdc, or a local copy)",
        )
        check(
            not self.storage_options or not isinstance(self.root, Path),
            "storage_options",
            f"apply to an fsspec URI root (s3://...), and root={self.root} is a local path (fix: drop them)",
        )
        check(bool(self.split), "split", "must be a non-empty folder name such as train or val")
        check(self.limit >= 0, "limit", f"must be >= 0 (0 = all), got {self.limit}")
        unknown = [w for w in self.weathers if w not in WEATHERS]
        check(not unknown, "weathers", f"unknown {unknown}; allowed: {list(WEATHERS)}")


def list_samples(cfg: DatasetConfig) -> ReadResult:
    """List the samples ``cfg`` names (sorted, at most ``cfg.limit`` when set).

    A URI root is listed once (``ListedTree``); its references point into the node cache and
    carry what ``factory.data.tree.fetch`` needs, and every error names the URI, not the cache.
    """
    if isinstance(cfg.root, Path):
        return _limited(_list(cfg, cfg.root, LOCAL), cfg.limit)
    tree = ListedTree.from_uri(cfg.root, cfg.cache, cfg.storage_options)
    try:
        result = _list(cfg, tree.root, tree)
    except DataError as e:
        raise DataError(tree.uri_of(e.path), e.problem, e.fix) from None
    bad = [
        BadSample(Path(tree.uri_of(b.path)), b.reason.replace(str(tree.root), tree.uri)) for b in result.bad
    ]
    result = _limited(result, cfg.limit)
    return ReadResult([tree.annotate(r) for r in result.refs], bad)


def _list(cfg: DatasetConfig, root: Path, tree: Tree) -> ReadResult:
    if cfg.kind == "cityscapes":
        return list_cityscapes(root, cfg.split, cities=cfg.cities or None, on_error=cfg.on_error, tree=tree)
    if cfg.kind == "acdc":
        return list_acdc(root, cfg.split, weathers=tuple(cfg.weathers), on_error=cfg.on_error, tree=tree)
    return list_shards(root, split=cfg.split, on_error=cfg.on_error)


def _limited(result: ReadResult, limit: int) -> ReadResult:
    return ReadResult(result.refs[:limit], result.bad) if limit else result


__all__ = ["DatasetConfig", "list_samples"]
