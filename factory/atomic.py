"""Atomic writes and content digests: the one home for both.

Why: every artifact the factory writes (shards, manifest parts, PCA files, checkpoints, stage
markers) must be either absent or complete after a crash, and every fingerprint must be the
same function of its inputs wherever it is computed. A write goes to a temporary name in the
same folder, is fsynced, ``os.replace``d onto its final name, and the folder is fsynced (the
rename itself is then durable).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the checksum recorded for shard members)."""
    return hashlib.sha256(data).hexdigest()


def digest(obj: Any, length: int = 16) -> str:
    """A short, stable digest of a JSON-able object (sorted keys; non-JSON values by ``str``)."""
    payload = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str | None:
    """SHA-256 of a file's bytes (None when it does not exist), read in 1 MiB blocks."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a hidden temporary beside ``path`` (``.tmp-<name>.<pid>-<thread>``,
    unique per writer thread), which is then renamed onto ``path``; on an exception it is removed.
    A reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, and
    the new one survives a crash once this returns (file and folder fsynced)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)
    fsync_dir(Path(path).parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a temporary file (a crash mid-save keeps the previous checkpoint).

    Load such a file with ``torch.load(path, weights_only=True)``: it must hold tensors and plain
    containers only, never pickled objects.
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
