"""Where a dataset's files are: a local folder, or an fsspec URI listed once and fetched per sample.

The readers (factory.data.cityscapes, factory.data.acdc) ask a folder tree four questions: is
this a folder, is this a file, which folders does it hold, which files with this suffix.
``LocalTree`` asks the disk. ``ListedTree`` answers from one recursive listing of a URI
(``Store.find``: paginated requests, never one per file; Cityscapes train is ~18k files, 1M
references ~5M), in the coordinates of a node-local cache: the listed file ``<uri>/<rel>`` is
``<cache>/<digest of the uri>/<rel>`` on every node. So the references a driver lists are plain
local paths, the same on every node, nothing is downloaded to list them, and a worker brings a
reference's files into its node's cache just before it reads them (``fetch``): once per node,
atomically (a temporary, then a rename, so a file in the cache is complete), and again when the
cached file's size differs from the listed one.

Each listed reference carries ``meta["remote"]``: the URI, the cache folder and the listed
(size, version) of each of its files. ``fetch`` needs it, and ``dataset_identity`` digests the
listed versions (an object's ETag) instead of the cache's files, so a rewritten object changes
the plan fingerprint as a rewritten local file does. It is a dict, so it never reaches a
shard's ``source`` metadata: a run from a URI writes the bytes a run from a local copy writes.

Credentials and endpoints: ``dataset.storage_options``, or the environment the protocol's
library reads (factory.storage). The cache holds what was fetched; delete it to free the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from factory.data.sample import DataError, SampleRef
from factory.storage import open_store

DEFAULT_CACHE = Path("/tmp/lumen-dataset-cache")  # node-local disk; dataset.cache changes it


class Tree(Protocol):
    """The four questions a dataset reader asks of a folder tree."""

    def is_dir(self, path: Path) -> bool: ...

    def is_file(self, path: Path) -> bool: ...

    def subdirs(self, path: Path) -> list[Path]:
        """The folders directly in ``path``, sorted."""
        ...

    def files(self, path: Path, suffix: str) -> list[Path]:
        """The entries directly in ``path`` whose name ends with ``suffix``, sorted."""
        ...


class LocalTree:
    """A local (or mounted) folder."""

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def subdirs(self, path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.is_dir())

    def files(self, path: Path, suffix: str) -> list[Path]:
        return sorted(path.glob(f"*{suffix}"))


LOCAL = LocalTree()


def cache_root(uri: str, cache: Path) -> Path:
    """Where the files of dataset ``uri`` go on every node: ``<cache>/<digest of the uri>``."""
    return cache / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


class ListedTree:
    """A dataset on an fsspec URI, seen through one recursive listing, in cache coordinates."""

    def __init__(self, uri: str, listing: Mapping[str, tuple[int, str]], cache: Path):
        self.uri = uri.rstrip("/")
        self.root = cache_root(self.uri, cache)
        self.listing = dict(listing)
        self._dirs: dict[str, set[str]] = {}  # folder (relative, "" = root) -> its sub-folders
        self._files: dict[str, list[str]] = {}  # folder -> the names of the files directly in it
        for rel in self.listing:
            folder, _, name = rel.rpartition("/")
            self._files.setdefault(folder, []).append(name)
            self._dirs.setdefault(folder, set())
            while folder:  # register the folder with its parent, up to the first one known
                parent, _, base = folder.rpartition("/")
                children = self._dirs.setdefault(parent, set())
                if base in children:
                    break
                children.add(base)
                folder = parent

    @classmethod
    def from_uri(cls, uri: str, cache: Path, storage_options: Mapping[str, Any] | None = None) -> ListedTree:
        try:
            listing = open_store(uri, storage_options).find()
        except Exception as e:  # the store's library raises its own types (botocore, gcsfs, ...)
            raise DataError(
                uri,
                f"cannot list the dataset ({type(e).__name__}: {e})",
                "check the URI and the credentials (dataset.storage_options or the environment)",
            ) from None
        return cls(uri, listing, cache)

    def rel(self, path: Path) -> str | None:
        """``path`` relative to the cache root (``""`` for the root), None when outside it."""
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return None
        return "" if rel == "." else rel

    def uri_of(self, path: Path) -> str:
        """The URI a cache path stands for (for messages)."""
        rel = self.rel(path)
        return str(path) if rel is None else (f"{self.uri}/{rel}" if rel else self.uri)

    def is_dir(self, path: Path) -> bool:
        rel = self.rel(path)
        return rel is not None and rel in self._dirs

    def is_file(self, path: Path) -> bool:
        rel = self.rel(path)
        return rel is not None and rel in self.listing

    def subdirs(self, path: Path) -> list[Path]:
        rel = self.rel(path)
        return [path / name for name in sorted(self._dirs.get(rel, ()))] if rel is not None else []

    def files(self, path: Path, suffix: str) -> list[Path]:
        rel = self.rel(path)
        names = self._files.get(rel, []) if rel is not None else []
        return sorted(path / n for n in names if n.endswith(suffix))

    def annotate(self, ref: SampleRef) -> SampleRef:
        """``ref`` with ``meta["remote"]``: what ``fetch`` and ``dataset_identity`` need."""
        files = {
            kind: list(self.listing[Path(p).relative_to(self.root).as_posix()])
            for kind, p in ref.paths.items()
        }
        return replace(
            ref, meta={**ref.meta, "remote": {"uri": self.uri, "cache": str(self.root), "files": files}}
        )


def fetch(ref: SampleRef, storage_options: Mapping[str, Any] | None = None) -> None:
    """Bring the files of a listed reference into this node's cache (nothing for a local one).

    A file already there with its listed size is kept. A failed download is a DataError naming
    the object, so a job records the reference as a failed row and goes on.
    """
    remote = ref.meta.get("remote")
    if not remote:
        return
    store = open_store(remote["uri"], storage_options)
    root = Path(remote["cache"])
    for kind, path in ref.paths.items():
        path = Path(path)
        size = int(remote["files"][kind][0])
        if path.is_file() and path.stat().st_size == size:
            continue
        name = path.relative_to(root).as_posix()
        try:
            store.download(name, path)
        except Exception as e:  # the store's library raises its own types
            raise DataError(
                store.where(name),
                f"cannot fetch {kind} into the node cache {root} ({type(e).__name__}: {e})",
                "check that the object still exists, the credentials and the free space of dataset.cache",
            ) from None


def fetch_all(
    refs: list[SampleRef], storage_options: Mapping[str, Any] | None = None, threads: int = 8
) -> None:
    """``fetch`` every reference, ``threads`` at a time (a whole training set, before training)."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="fetch") as pool:
        list(pool.map(lambda r: fetch(r, storage_options), refs))


__all__ = ["DEFAULT_CACHE", "LOCAL", "ListedTree", "LocalTree", "Tree", "cache_root", "fetch", "fetch_all"]
