"""Content identities for the plan fingerprint: what the inputs of an output folder *are*.

A fingerprint of paths and settings alone lets two different inputs under the same names mix in
one folder: another dataset root with the same keys, or a ControlNet retrained and saved at the
same path. Two identities close that gap, each chosen for its cost:

- ``dataset_identity``: a digest of every reference file's name, size and mtime (ns) - for a
  dataset on a URI, the size and version (ETag) its listing gave (factory.data.tree). One
  ``stat`` per file (Cityscapes train: ~18k files, well under a second), so every run can
  afford it. Any rewrite of a file changes it; a copy that does not keep mtimes (``cp`` without
  ``-p``) changes it too and the job refuses to resume - the safe side: it says so and the fix
  is a new output folder. Hashing the images instead would read the dataset (~11 GB for
  Cityscapes) on every resume.
- ``content_identity``: the sha256 of the bytes of every local file or folder a config names
  (base model, ControlNet, PCA, segmenter, plugin, prompt file). Models are what decide the
  pixels and are small next to a dataset (SD 1.5 in fp32: ~4 GB, a few seconds to hash), so they
  are identified by content: the same weights copied elsewhere are the same input, retrained
  weights at the same path are not. Names that are not local paths (``tiny``, a hub id) stand
  for themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from factory.data.sample import SampleRef


def dataset_identity(refs: Iterable[SampleRef]) -> str:
    """Digest of (key, kind, file name, size, mtime_ns) over every file of every reference."""
    h = hashlib.sha256()
    for ref in refs:
        listed = (ref.meta.get("remote") or {}).get("files")  # a URI dataset (factory.data.tree)
        for kind in sorted(ref.paths):
            path = Path(ref.paths[kind])
            if listed:  # the listed size and version (ETag): the node cache may not hold it
                size, version = listed[kind]
                h.update(f"{ref.key}\0{kind}\0{path.name}\0{size}\0{version}\n".encode())
                continue
            try:
                st = path.stat()
                entry = f"{ref.key}\0{kind}\0{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n"
            except OSError:
                entry = f"{ref.key}\0{kind}\0{path.name}\0missing\n"
            h.update(entry.encode())
    return h.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_identity(path: Path) -> str:
    """sha256 over a file's bytes, or over (relative name, sha256) of every file in a folder."""
    if path.is_file():
        return _file_sha256(path)[:16]
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def content_identity(obj: Any) -> dict[str, str]:
    """For every string in a (nested) config dict that names an existing local file or folder,
    its ``path_identity``; keyed by the value's dotted position. A plugin reference
    ``file.py:factory`` is identified by its file."""
    found: dict[str, str] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str | Path) and str(value) not in ("", "."):
            text = str(value)
            candidate = Path(text.split(":", 1)[0] if ".py:" in text else text)
            if candidate.exists():
                found[where] = path_identity(candidate)

    walk(obj, "")
    return found


__all__ = ["content_identity", "dataset_identity", "path_identity"]
