"""Random access into our webdataset shards (no mmseg import).

Training samplers need ``dataset[i]`` (shuffling, several workers, infinite sampling), while a
webdataset tar is a stream. A tar member's data sits at a fixed byte offset, so one pass over
each shard's headers at start-up gives an index ``key -> {suffix: (offset, size)}``; reading a
sample is then one seek and read per file. Shards are never modified after their rename
(DESIGN.md), so the index stays valid for the run.

Indexing trusts nothing it has not checked (the checks live in factory.data.shards, shared
with the factory's reader): a compressed or truncated file, or a member whose header declares
more than ``max_member_bytes``, is refused before a byte of data is read; ``index_shards``
also holds each shard to its job's manifest and refuses a key found in two shards.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from downstream.shard_manifest import check_shard_keys
from factory.data.members import IMAGE_SUFFIXES as WRITTEN_IMAGE_SUFFIXES
from factory.data.members import LABEL_MEMBERS, MAX_MEMBER_BYTES, META_MEMBER, member_name, split_member
from factory.data.sample import DataError
from factory.data.shards import check_complete, check_member_size, check_plain_tar

# the suffixes our writer uses (factory.data.members), plus ".jpeg" from other webdataset tools
IMAGE_SUFFIXES = (*WRITTEN_IMAGE_SUFFIXES, "jpeg")
LABELIDS_MEMBER = LABEL_MEMBERS["labelids"]
REQUIRED = (LABELIDS_MEMBER,)


@dataclass(frozen=True)
class ShardMember:
    shard: str
    offset: int
    size: int


@dataclass
class ShardSample:
    """Where one sample's files lie inside a shard: ``files[suffix] = ShardMember``."""

    key: str
    shard: str
    files: dict[str, ShardMember] = field(default_factory=dict)

    @property
    def image_suffix(self) -> str:
        for s in IMAGE_SUFFIXES:
            if s in self.files:
                return s
        raise DataError(
            self.shard, f"sample {self.key!r} has no image member", f"write '{member_name('<key>', 'png')}'"
        )


def expand_shards(shards: str | list[str] | tuple[str, ...]) -> list[str]:
    """A glob, a path, or a list of them -> sorted shard paths; error when nothing matches."""
    patterns = [shards] if isinstance(shards, str | Path) else list(shards)
    paths: list[str] = []
    for pattern in patterns:
        hits = sorted(glob.glob(str(pattern)))
        if not hits:
            raise DataError(
                pattern,
                "no shard matches this path or glob",
                "check SYNTH= / shards= (e.g. 'out/shards/*.tar')",
            )
        paths.extend(hits)
    return paths


def index_shard(path: str, max_member_bytes: int = MAX_MEMBER_BYTES) -> list[ShardSample]:
    """Read a shard's tar headers once; group members by key (the name before the first '.').

    Refused before any member is read, naming the shard: a compressed file (``check_plain_tar``),
    a tar without its end-of-archive marker (``check_complete``), a member whose header
    declares more than ``max_member_bytes``.
    """
    samples: dict[str, ShardSample] = {}
    check_plain_tar(path)
    check_complete(Path(path))
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                check_member_size(path, m.name, m.size, max_member_bytes)
                name = Path(m.name).name
                if "." not in name:
                    continue
                key, suffix = split_member(name)
                s = samples.setdefault(key, ShardSample(key=key, shard=path))
                s.files[suffix] = ShardMember(path, m.offset_data, m.size)
    except tarfile.TarError as e:
        raise DataError(
            path,
            f"not a readable tar shard ({e})",
            "re-write the shard; only complete shards are renamed to .tar",
        ) from None
    for s in samples.values():
        missing = [r for r in REQUIRED if r not in s.files]
        if missing:
            raise DataError(
                path, f"sample {s.key!r} lacks {missing}", "shards must follow the DESIGN.md schema"
            )
        _ = s.image_suffix
    return list(samples.values())


def index_shards(paths: list[str], max_member_bytes: int = MAX_MEMBER_BYTES) -> list[ShardSample]:
    """``index_shard`` over ``paths``, then the checks across and beyond single shards:

    - each shard holds exactly the samples its job's manifest records as ok, when a manifest
      sits beside the shards (downstream.shard_manifest): a tar cut at a member boundary is a
      valid tar with fewer samples, which only the record reveals;
    - no key is in two shards (it would be drawn twice as often), naming both shards.
    """
    where: dict[str, str] = {}
    out: list[ShardSample] = []
    for path in paths:
        samples = index_shard(path, max_member_bytes)
        check_shard_keys(path, [s.key for s in samples])
        for s in samples:
            if s.key in where:
                raise DataError(
                    path,
                    f"sample {s.key!r} is also in {where[s.key]}",
                    "list each sample in one shard only (two jobs' shards in one glob, or one shard "
                    "matched by two patterns?)",
                )
            where[s.key] = path
        out.extend(samples)
    return out


def read_member(m: ShardMember) -> bytes:
    with open(m.shard, "rb") as f:
        f.seek(m.offset)
        return f.read(m.size)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 BGR (mmseg's convention)."""
    try:  # OpenCV refuses images above CV_IO_MAX_IMAGE_PIXELS (2**30) before decoding
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise DataError(where, f"image bytes refused by the decoder ({e})", "re-write the shard") from None
    if arr is None:
        raise DataError(where, "image bytes do not decode", "re-write the shard")
    return arr


def open_png(source: bytes | str | Path, where: str | Path, *, load: bool = True) -> Image.Image:
    """PIL image of a label PNG (bytes or a file); every decoder failure is a DataError naming
    ``where`` - a decompression bomb (a header claiming e.g. 40000x40000 pixels) included, so a
    training run skips the sample instead of dying. ``load=False`` reads the header only."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if load:
            img.load()
    except Image.DecompressionBombError as e:
        raise DataError(where, f"label PNG refused, too large: {e}", "re-write the file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(where, f"label PNG does not decode ({e})", "re-write the file") from None
    return img


def decode_label(data: bytes, where: str) -> np.ndarray:
    """An 8-bit single-channel label PNG -> HxW uint8."""
    img = open_png(data, where)
    if img.mode not in ("L", "P"):
        raise DataError(
            where,
            f"label PNG has mode {img.mode!r}, expected 8-bit single channel ('L')",
            "store the reference's labelIds PNG bytes unchanged",
        )
    return np.asarray(img, dtype=np.uint8)


def read_meta(sample: ShardSample) -> dict[str, Any]:
    if META_MEMBER not in sample.files:
        return {}
    try:
        return json.loads(read_member(sample.files[META_MEMBER]))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{sample.shard}:{member_name(sample.key, META_MEMBER)}",
            f"metadata is not JSON ({e})",
            "re-write the shard",
        ) from None
