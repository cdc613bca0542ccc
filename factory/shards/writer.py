"""Webdataset shard writing: one tar per shard, written atomically, labels copied byte for byte.

Why this shape:
- A shard is the unit of resume. It is written to a temporary file and only then becomes the
  shard (``factory.storage.Store.staged``): in a local folder a hidden temporary name in the same
  folder, fsynced, ``os.replace``d to its final name and the folder fsynced; on an object store
  a local temporary file uploaded to its final key in one PUT. Either way a crash leaves a
  complete shard or no shard, never a truncated one a reader would accept.
- Label files are the reference's own bytes (DESIGN.md): never decoded and re-encoded, so a
  synthetic sample's labels are exactly the reference's.
- Image encoding (PNG of 512x1024: 85-220 ms on one core) runs in a thread pool: OpenCV
  releases the GIL while encoding, so the caller's loop (a GPU) keeps working.
- Tar headers carry a fixed mtime/owner, so the same samples give byte-identical shards.
- The member names (``<key>.png``, ``<key>.labelids.png``, ...) are the format's, stated once in
  factory.data.members, which the readers use too.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from factory.atomic import sha256
from factory.config import check
from factory.data.members import GENERATED_MEMBERS, LABEL_MEMBERS, META_MEMBER, ImageFormat, member_name
from factory.data.sample import DataError, SampleRef, check_key
from factory.storage import LocalStore, Store


@dataclass
class ShardConfig:
    """How shards are encoded. ``encode_threads`` bounds the image-encoding thread pool."""

    image_format: ImageFormat = "png"
    jpeg_quality: int = 95
    png_compression: int = 3
    encode_threads: int = 2

    def __post_init__(self) -> None:
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", f"must be in 1..100, got {self.jpeg_quality}")
        check(
            0 <= self.png_compression <= 9, "png_compression", f"must be in 0..9, got {self.png_compression}"
        )
        check(self.encode_threads >= 1, "encode_threads", f"must be >= 1, got {self.encode_threads}")


def encode_image(image: np.ndarray, cfg: ShardConfig) -> bytes:
    """Encode an HxWx3 uint8 RGB image to PNG/JPEG/WebP bytes (deterministic for PNG/WebP)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if cfg.image_format == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression]
    elif cfg.image_format == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]
    else:
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # 101 = lossless
    ok, buf = cv2.imencode("." + cfg.image_format, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {cfg.image_format}")
    return buf.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """An HxW uint8 map (e.g. the agreement member) as a deterministic 8-bit grey PNG."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be HxW uint8, got {mask.dtype} {mask.shape}")
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {mask.shape} mask as PNG")
    return buf.tobytes()


def label_files(ref: SampleRef) -> dict[str, Path]:
    """The reference's label files to ship, by member suffix. Raises DataError if one is missing."""
    out: dict[str, Path] = {}
    for kind, suffix in LABEL_MEMBERS.items():
        path = ref.paths.get(kind)
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise DataError(path, f"label file ({kind}) of sample {ref.key} is missing", "restore the file")
        out[suffix] = path
    return out


@dataclass
class WrittenSample:
    """What was written for one sample: its key and the sha256 of every member (by suffix)."""

    key: str
    checksums: dict[str, str] = field(default_factory=dict)
    encode_s: float = 0.0


class ShardWriter:
    """Collects samples for ONE shard and writes it atomically on ``close()``.

    ``add`` returns at once: the image is encoded on ``pool`` (shared between writers so the
    number of encoding threads stays bounded). Samples are written in the order they were
    added, so the same inputs give a byte-identical tar.

    ``path`` is a local file, or with ``store`` (factory.storage) a name in that store (a job's
    ``shards`` folder, local or on an object store). ``size`` is the tar's size once closed.
    """

    def __init__(
        self,
        path: str | Path,
        cfg: ShardConfig | None = None,
        pool: ThreadPoolExecutor | None = None,
        *,
        store: Store | None = None,
    ):
        if store is None:
            store, path = LocalStore(Path(path).parent), Path(path).name
        self.store, self.name = store, str(path)
        self.path = store.where(self.name)  # for messages: a local path or a URI
        if not self.name.endswith(".tar"):
            raise ValueError(f"shard path {self.path} must end with .tar")
        self.size = 0
        self.cfg = cfg or ShardConfig()
        self._own_pool = pool is None
        self._pool = pool or ThreadPoolExecutor(self.cfg.encode_threads, thread_name_prefix="encode")
        self._pending: list[tuple[str, Future[bytes] | None, dict[str, bytes], bytes]] = []
        self._keys: set[str] = set()
        self._closed = False

    def add(
        self,
        key: str,
        image: np.ndarray,
        labels: dict[str, Path],
        meta: dict[str, Any],
        generated: dict[str, bytes] | None = None,
    ) -> None:
        """Queue one sample: ``image`` RGB uint8, ``labels`` member suffix -> file, ``meta`` JSON,
        ``generated`` members the job computed (``GENERATED_MEMBERS`` suffix -> bytes)."""
        if self._closed:
            raise RuntimeError(f"shard {self.path} is already closed")
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path}")
        for suffix in labels:
            if suffix not in LABEL_MEMBERS.values():
                raise ValueError(
                    f"unknown label member {suffix!r}; allowed: {sorted(LABEL_MEMBERS.values())}"
                )
        for suffix in generated or {}:
            if suffix not in GENERATED_MEMBERS:
                raise ValueError(f"unknown generated member {suffix!r}; allowed: {list(GENERATED_MEMBERS)}")
        self._keys.add(key)
        label_bytes = {suffix: Path(p).read_bytes() for suffix, p in sorted(labels.items())}
        label_bytes.update(sorted((generated or {}).items()))
        meta_bytes = json.dumps(meta, sort_keys=True, indent=1).encode("utf-8")
        self._pending.append((key, self._pool.submit(encode_image, image, self.cfg), label_bytes, meta_bytes))

    def add_members(self, key: str, members: dict[str, bytes]) -> None:
        """Queue one sample of ready-made members (suffix -> bytes), e.g. ``layout.npy`` + ``json``."""
        if self._closed:
            raise RuntimeError(f"shard {self.path} is already closed")
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path}")
        if not members or any(not s or s.startswith(".") for s in members):
            raise ValueError(f"sample {key}: member suffixes must be non-empty, got {sorted(members)}")
        self._keys.add(key)
        self._pending.append((key, None, dict(members), b""))

    def __len__(self) -> int:
        return len(self._pending)

    def close(self) -> list[WrittenSample]:
        """Wait for encoding, write the tar to a temporary file, fsync, commit it (a rename, or
        an upload). Returns checksums."""
        if self._closed:
            raise RuntimeError(f"shard {self.path} is already closed")
        self._closed = True
        written: list[WrittenSample] = []
        try:
            with self.store.staged(self.name) as tmp, open(tmp, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for key, fut, label_bytes, meta_bytes in self._pending:
                        if fut is None:  # add_members: written as given
                            members = label_bytes
                        else:
                            members = {
                                self.cfg.image_format: fut.result(),
                                **label_bytes,
                                META_MEMBER: meta_bytes,
                            }
                        sample = WrittenSample(key)
                        for suffix, data in members.items():
                            _add_member(tar, member_name(key, suffix), data)
                            sample.checksums[suffix] = sha256(data)
                        written.append(sample)
                f.flush()
                os.fsync(f.fileno())
                self.size = f.tell()
        finally:
            if self._own_pool:
                self._pool.shutdown(wait=True)
        return written


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible bytes
    info.mode = 0o444
    info.uname = info.gname = "lumen"
    tar.addfile(info, io.BytesIO(data))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete leftovers of writers that died mid-write (``.<name>.tmp-<pid>`` from a shard,
    ``.tmp-<name>.<pid>`` from factory.atomic: every hidden name with ``.tmp-`` in it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


__all__ = [
    "ShardConfig",
    "ShardWriter",
    "WrittenSample",
    "encode_image",
    "encode_mask",
    "label_files",
    "remove_stale_temporaries",
]
