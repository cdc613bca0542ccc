"""Where a job's output lives: a local folder or an fsspec URI, behind the few operations a job needs.

Why: on a multi-node cluster every actor writes into the same output, and the simplest store
all nodes share is often an object store (``s3://bucket/prefix``, ``gs://...``), not a mounted
file system. The jobs' contract is the same on both - a shard is complete or absent, its
manifest part is written after it as the completion mark - but the mechanics differ:

- Local folder (``LocalStore``): a file is written under a temporary name in the same folder,
  fsynced, ``os.replace``d onto its name and the folder fsynced (factory.atomic), exactly as
  before this module existed.
- fsspec file system (``FsspecStore``): an object store has no rename, but an object PUT is
  atomic - a reader sees the old object, no object, or the whole new one, never a part of it
  (a multipart upload appears when it completes). So a file is built in a local temporary file
  and uploaded to its final key in one PUT; nothing temporary is ever written to the store, so
  there is nothing to clean up there after a crash. This holds for the object stores (s3, gs,
  az, memory); a protocol that streams into the final name (sftp, smb, hdfs) may show a
  reader a partial file while it uploads - resume is still safe, because the manifest part is
  written after the shard and ``factory.jobs.plan.verify_shard`` checks the tar against it.

Names inside a store are relative and ``/``-separated (``shards/shard-000000.tar``); ``where``
turns one into the path or URI a person can paste (every error message names it).

Exclusive create (``Store.create``) is what the output lock (factory.jobs.lock) and the fault
drills need: O_EXCL locally; a conditional PUT (``If-None-Match: *``) on S3, which AWS S3
supports since August 2024 and s3fs sends for ``mode="create"`` (moto's server honours it
too: tests/jobs/test_object_store.py). For other fsspec protocols fsspec's create is
check-then-write, not atomic: ``atomic_create`` says which one a store has.

Credentials and endpoints come from the environment the protocol's library reads (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, an instance role) or
from ``storage_options``, passed to fsspec as they are (cluster/README.md).

``python -m factory.storage cat URI`` writes one object to stdout (webdataset's ``pipe:`` reads
a shard with it) and ``rm URI`` deletes one (a stale lock), with the same credentials.
"""

from __future__ import annotations

import abc
import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from factory.atomic import atomic_write_bytes, atomic_write_with, fsync_dir

# protocols whose fsspec implementation creates an object only if it is absent, server-side
# (s3fs: a PUT with If-None-Match: *). Others fall back to fsspec's check-then-write.
ATOMIC_CREATE_PROTOCOLS = frozenset({"s3", "s3a"})
# which package provides a protocol, for the error when it is missing
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# option names whose values are secrets: never written to a card or a log
_SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)

Location = Path | str  # a local path, or an fsspec URI (a str)


class StorageError(RuntimeError):
    """A store cannot be opened (unknown protocol, missing package) or an operation failed."""


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is an fsspec URI (``s3://...``, ``memory://...``, a chain ``a::b://``)
    rather than a local path. A ``Path`` never is one."""
    if isinstance(location, Path):
        return False
    return bool(_URI.match(location)) or "::" in location


def location(value: str | Path) -> Location:
    """``value`` as a job's output location: a ``Path`` for a local path (``file://`` URIs
    included: they are local, and keep the local lock and rename), else the URI as a ``str``
    without a trailing ``/``."""
    if isinstance(value, Path):
        return value
    if value.startswith("file://"):
        return Path(value.removeprefix("file://"))
    if is_uri(value):
        return value.rstrip("/")
    return Path(value)


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the values of secret-looking keys (key, secret, token, ...) replaced."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = redact(v)
        else:
            out[k] = "<redacted>" if _SECRET.search(str(k)) else v
    return out


class Store(abc.ABC):
    """A folder of a job's output: every operation takes a name relative to it."""

    location: str  # the folder, as a person would name it (a path or a URI)
    options: dict[str, Any]  # what opens it again elsewhere (fsspec's storage_options; {} locally)

    @abc.abstractmethod
    def child(self, folder: str) -> Store:
        """The store rooted at ``folder`` inside this one (e.g. ``shards``)."""

    def where(self, name: str = "") -> str:
        """``name`` as a path or URI a person can use (for messages and readers)."""
        return f"{self.location}/{name}" if name else self.location

    def local_path(self) -> Path | None:
        """The local folder this store is, or None on a remote file system."""
        return None

    @property
    @abc.abstractmethod
    def atomic_create(self) -> bool:
        """Whether ``create`` is atomic: of two concurrent creators, exactly one succeeds."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    def listdir(self, folder: str = "") -> list[str]:
        """Names of the files directly in ``folder`` (sorted; [] when it does not exist)."""
        return sorted(self.sizes(folder))

    @abc.abstractmethod
    def sizes(self, folder: str = "") -> dict[str, int]:
        """Name -> size in bytes of every file directly in ``folder``, from one listing ({} when
        it does not exist): the cheap resume check compares a whole folder with one request."""

    @abc.abstractmethod
    def find(self, folder: str = "") -> dict[str, tuple[int, str]]:
        """Every file under ``folder``, recursively, from one listing (paginated by the server,
        never one request per file): name relative to ``folder`` -> (size, version), where the
        version changes when the file is rewritten (an object's ETag, a file's mtime)."""

    @abc.abstractmethod
    def download(self, name: str, dest: Path) -> None:
        """Copy file ``name`` to the local path ``dest`` atomically: a temporary beside it, then
        a rename, so a file at ``dest`` is always complete (a node-local cache relies on it)."""

    @abc.abstractmethod
    def size(self, name: str) -> int | None:
        """Size in bytes of file ``name``; None when there is no such file."""

    @abc.abstractmethod
    def open(self, name: str, block_size: int | None = None) -> IO[bytes]:
        """``name`` opened for reading (seekable). ``block_size``: the read-ahead of a remote
        file (small when only headers are wanted); ignored locally."""

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    @abc.abstractmethod
    def put_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically: a reader sees the old content or all of ``data``."""

    @abc.abstractmethod
    def staged(self, name: str) -> Any:
        """``with store.staged(name) as tmp:`` - write the file at local path ``tmp``; on normal
        exit it becomes ``name`` atomically, on an exception it is discarded."""

    @abc.abstractmethod
    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` only if it does not exist; False when it exists. Atomic where
        ``atomic_create`` says so."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Delete file ``name``; nothing when it does not exist."""


class LocalStore(Store):
    """A local folder (or a mounted shared file system): temporary name + fsync + rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)
        self.options = {}

    def child(self, folder: str) -> LocalStore:
        return LocalStore(self.root / folder)

    def where(self, name: str = "") -> str:
        return str(self.root / name) if name else self.location

    def local_path(self) -> Path:
        return self.root

    @property
    def atomic_create(self) -> bool:
        return True

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def sizes(self, folder: str = "") -> dict[str, int]:
        path = self.root / folder
        if not path.is_dir():
            return {}
        with os.scandir(path) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file()}

    def find(self, folder: str = "") -> dict[str, tuple[int, str]]:
        top = self.root / folder
        found: dict[str, tuple[int, str]] = {}
        for dirpath, _, names in os.walk(top):
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                rel = os.path.relpath(os.path.join(dirpath, n), top).replace(os.sep, "/")
                found[rel] = (st.st_size, str(st.st_mtime_ns))
        return found

    def download(self, name: str, dest: Path) -> None:
        atomic_write_with(dest, lambda tmp: shutil.copyfile(self.root / name, tmp))

    def size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.is_file() else None

    def open(self, name: str, block_size: int | None = None) -> IO[bytes]:
        return open(self.root / name, "rb")

    def put_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        # same folder, hidden: the rename is atomic, and factory.shards.remove_stale_temporaries
        # finds what a killed writer left
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            yield tmp
            os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, name: str, data: bytes) -> bool:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


class FsspecStore(Store):
    """A folder of an fsspec file system (an object store): local temporary file + one upload.

    Listings and sizes are always asked of the server: fsspec file systems cache listings per
    instance, and here other processes (the actors) write while the driver reads.
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None):
        self.location = uri.rstrip("/")
        self.options = dict(storage_options or {})
        scheme = self.location.split("::")[-1].split("://", 1)[0]
        try:
            import fsspec
        except ImportError as e:  # pragma: no cover - a declared dependency (pyproject.toml)
            raise StorageError(f"{uri}: fsspec is not installed (fix: pip install fsspec)") from e
        try:
            self.fs, root = fsspec.core.url_to_fs(self.location, **self.options)
        except ImportError as e:
            package = _PACKAGES.get(scheme, f"the fsspec implementation of {scheme}://")
            extra = " (the project's s3 extra: pip install -e '.[s3]')" if package == "s3fs" else ""
            raise StorageError(
                f"{uri}: writing to {scheme}:// needs {package}, which is not installed "
                f"(fix: pip install {package}{extra}): {e}"
            ) from None
        except ValueError as e:
            raise StorageError(f"{uri}: fsspec cannot open this URI ({e}); fix: check the protocol") from None
        self.root = str(root).rstrip("/")

    def child(self, folder: str) -> FsspecStore:
        sub = object.__new__(FsspecStore)  # the same file system instance, a deeper root
        sub.location, sub.options = f"{self.location}/{folder}", self.options
        sub.fs, sub.root = self.fs, f"{self.root}/{folder}"
        return sub

    @property
    def atomic_create(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) else (self.fs.protocol,)
        return any(p in ATOMIC_CREATE_PROTOCOLS for p in protocols)

    def _full(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str) -> bool:
        return self.size(name) is not None or self._isdir(name)

    def _isdir(self, name: str) -> bool:
        return bool(self.listdir(name))

    def sizes(self, folder: str = "") -> dict[str, int]:
        path = self._full(folder)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"])
            for e in entries
            if e.get("type") == "file"
        }

    def find(self, folder: str = "") -> dict[str, tuple[int, str]]:
        top = self._full(folder).rstrip("/")
        self.fs.invalidate_cache(top)
        try:
            entries = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return {}
        found: dict[str, tuple[int, str]] = {}
        for name, info in entries.items():
            if info.get("type") != "file":
                continue
            rel = name.rstrip("/").removeprefix(top).lstrip("/")  # fsspec names carry no protocol, as root
            version = next(
                (str(info[k]) for k in ("ETag", "etag", "mtime", "LastModified", "created") if k in info), ""
            )
            found[rel] = (int(info["size"]), version)
        return found

    def download(self, name: str, dest: Path) -> None:
        atomic_write_with(dest, lambda tmp: self.fs.get_file(self._full(name), str(tmp)))

    def size(self, name: str) -> int | None:
        path = self._full(name)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def open(self, name: str, block_size: int | None = None) -> IO[bytes]:
        path = self._full(name)
        self.fs.invalidate_cache(path)
        if block_size is None:
            return self.fs.open(path, "rb")
        return self.fs.open(path, "rb", block_size=block_size, cache_type="readahead")

    def read_bytes(self, name: str) -> bytes:
        path = self._full(name)
        self.fs.invalidate_cache(path)
        return bytes(self.fs.cat_file(path))

    def put_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._full(name), data)

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        # in the local temporary folder: a worker killed mid-write leaves it there, never in the store
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name.rsplit('/', 1)[-1]}.tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            self.fs.put_file(str(tmp), self._full(name))  # one object, visible when complete
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._full(name), data, mode="create")
        except FileExistsError:
            return False
        return True

    def remove(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._full(name))


def open_store(out: str | Path | Store, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store for an output location: a ``LocalStore`` for a local path, an ``FsspecStore``
    for a URI (``storage_options`` go to fsspec; they are refused for a local path)."""
    if isinstance(out, Store):
        return out
    where = location(out)
    if isinstance(where, Path):
        if storage_options:
            raise StorageError(
                f"{out}: storage_options apply to an fsspec URI (s3://...), and this is a local path "
                "(fix: drop storage_options, or give the URI)"
            )
        return LocalStore(where)
    return FsspecStore(where, storage_options)


def open_location(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """One file, local or a URI, opened for reading (the readers' way into a store)."""
    if not is_uri(path):
        return open(path, "rb")
    folder, _, name = str(path).rpartition("/")
    return open_store(folder, storage_options).open(name)


def location_size(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """Size of one file, local or a URI; None when it does not exist."""
    if not is_uri(path):
        p = Path(path)
        return p.stat().st_size if p.is_file() else None
    folder, _, name = str(path).rpartition("/")
    return open_store(folder, storage_options).size(name)


def main(argv: list[str] | None = None) -> int:
    """``python -m factory.storage cat|rm URI``: one object to stdout, or deleted."""
    parser = argparse.ArgumentParser(prog="python -m factory.storage", description=main.__doc__)
    parser.add_argument("command", choices=["cat", "rm"])
    parser.add_argument("uri", help="a local path or an fsspec URI (s3://bucket/run/shards/shard-000000.tar)")
    args = parser.parse_args(argv)
    folder, _, name = str(args.uri).rstrip("/").rpartition("/")
    store = open_store(folder or ".")
    if store.size(name) is None:
        raise StorageError(f"{args.uri}: no such file or object")
    if args.command == "rm":
        store.remove(name)
        return 0
    with store.open(name) as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    return 0


__all__ = [
    "ATOMIC_CREATE_PROTOCOLS",
    "FsspecStore",
    "LocalStore",
    "Location",
    "Store",
    "StorageError",
    "is_uri",
    "location",
    "location_size",
    "main",
    "open_location",
    "open_store",
    "redact",
]


if __name__ == "__main__":
    from factory.cli import STARTS_OVER, run_cli

    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
