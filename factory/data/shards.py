"""Our webdataset shards (real references or synthetic variants, DESIGN.md schema) as SampleRefs.

Why it works this way: every stage downstream of the readers takes a ``SampleRef`` whose
``paths`` are files (``load_sample`` decodes them, the shard writer copies label files byte for
byte). A shard holds those files as tar members, so the simplest honest bridge is to extract
each shard once into a folder of plain files and point the refs there:

- ``list_shards`` extracts every shard on first listing into ``<cache>/<shard stem>-<size>-<mtime
  ns>/`` (``cache`` defaults to ``<shard folder>/.extracted``). The folder name changes when the
  shard is rewritten (a rerun of a job), so a stale extraction is never used; older
  extractions of the same shard are deleted.
- Extraction goes to a temporary folder that is renamed when complete, so an interrupted
  listing leaves no half-extracted shard behind, and a corrupt shard is all or nothing.
- Members are read with stock ``webdataset`` (``factory.data.members.read_shard_samples``, the
  format's own reader); member names are kept (``<key>.png``, ``<key>.labelids.png``, ...), so
  the extracted label files are the shard's bytes.
- Nothing is inflated or read before it is checked: webdataset decompresses a gzip/bz2/xz file
  transparently and reads each member whole into memory, so a compressed file named ``.tar``
  (``check_plain_tar``: magic bytes) and a member larger than ``max_member_bytes``
  (``check_member_sizes``: tar headers only) are refused first, naming the file.

Cost: the disk space of the shards once more. Datasets too big for that should be read by
random access into the tar (downstream.segformer.shards does so for training).

Layout: ``root/<split>/*.tar`` when that folder exists, else ``root/*.tar`` (a job's
``out/shards`` folder holds one split).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from factory.data.members import (
    AGREE_KIND,
    AGREE_MEMBER,
    IMAGE_SUFFIXES,
    MAX_MEMBER_BYTES,
    MEMBER_KINDS,
    META_MEMBER,
    TAR_MAGIC,
    TAR_MAGIC_OFFSET,
    compression_of,
    member_name,
    read_shard_samples,
)
from factory.data.sample import BadSample, DataError, ReadResult, SampleRef, check_key
from factory.storage import location_size, open_location

OnError = Literal["raise", "skip"]
_FIX = "re-write the shard (rerun the job that made it; only complete shards are renamed to .tar)"


def shard_paths(root: str | Path, split: str) -> list[Path]:
    """The shard files of ``split``: ``root/<split>/*.tar`` if that folder exists, else ``root/*.tar``."""
    root = Path(root)
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise DataError(root, "shard folder does not exist", "point dataset.root at a folder of .tar shards")
    paths = sorted(folder.glob("*.tar"))
    if not paths:
        raise DataError(
            folder, "no .tar shards in this folder", "point dataset.root at a job's shards/ folder"
        )
    return paths


def check_complete(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
    """A tar ends with two zero blocks; a shard cut short (copy interrupted, disk full) does not.

    webdataset reads a truncated tar without complaint, up to where it was cut, so this is the
    only way to notice samples missing at the end. ``path`` may be an fsspec URI.
    """
    size = location_size(path, storage_options)
    if size is None:
        raise DataError(path, "shard does not exist", _FIX)
    if size < 1024 or size % 512:
        raise DataError(path, f"truncated tar ({size} bytes, not whole 512-byte blocks)", _FIX)
    with open_location(path, storage_options) as f:
        f.seek(size - 1024)
        if f.read(1024).strip(b"\0"):
            raise DataError(path, "truncated tar (no end-of-archive marker)", _FIX)


def check_plain_tar(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse a file that is not an uncompressed tar before anything inflates or reads it.

    The first 512-byte header of a plain tar carries ``ustar`` at byte 257 (an empty tar is
    zeros); a compressed file starts with its format's magic instead (factory.data.members).
    The tar magic is looked at first: a member name may begin like a compression magic.
    """
    with open_location(path, storage_options) as f:
        head = f.read(512)
    if head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
        return
    if len(head) == 512 and not head.strip(b"\0"):
        return  # an empty tar: its end-of-archive blocks only
    kind = compression_of(head)
    if kind is not None:
        raise DataError(
            path,
            f"{kind}-compressed data named like a tar: shards are plain tars, read by seeking to "
            "members, and a compressed one would be inflated whole before any size is checked",
            f"decompress it to a plain .tar, or {_FIX}",
        )
    raise DataError(path, "not a ustar tar (its first header lacks the 'ustar' magic)", _FIX)


def check_member_size(path: str | Path, name: str, size: int, max_member_bytes: int) -> None:
    """Refuse a member whose header declares more than ``max_member_bytes`` (before reading it)."""
    if size > max_member_bytes:
        raise DataError(
            path,
            f"member {name!r} declares {size} bytes, above the {max_member_bytes}-byte limit for "
            "one sample file (a sample's image or label is a few MB)",
            f"{_FIX}; if members this large are intended, raise max_member_bytes",
        )


def check_member_sizes(
    path: str | Path,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """``check_member_size`` for every member, from the tar headers alone (data is skipped)."""
    with open_location(path, storage_options) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
            check_member_size(path, m.name, m.size, max_member_bytes)


def extraction_dir(shard: Path, cache: Path) -> Path:
    """Where ``shard`` is extracted: named after the shard's size and mtime (a rewrite = new name)."""
    st = shard.stat()
    return cache / f"{shard.stem}-{st.st_size}-{st.st_mtime_ns}"


def extract_shard(shard: Path, cache: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Path:
    """Extract ``shard``'s members into their own folder (once) and return that folder.

    Before webdataset reads a byte: a plain tar (``check_plain_tar``), complete
    (``check_complete``), no member above ``max_member_bytes`` (``check_member_sizes``).
    """
    final = extraction_dir(shard, cache)
    if (final / ".complete").is_file():
        return final
    check_plain_tar(shard)
    check_complete(shard)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        check_member_sizes(shard, max_member_bytes)
        keys: list[str] = []
        for sample in read_shard_samples([shard]):
            key = sample["__key__"]
            try:
                check_key(key)
            except ValueError as e:
                raise DataError(shard, str(e), _FIX) from None
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            image = [s for s in IMAGE_SUFFIXES if s in members]
            has_meta = META_MEMBER in members
            if not image or not has_meta:
                missing = [
                    n
                    for n, ok in ((f"image ({'/'.join(IMAGE_SUFFIXES)})", image), (META_MEMBER, has_meta))
                    if not ok
                ]
                raise DataError(
                    shard, f"sample {key!r} lacks {', '.join(missing)} (members: {sorted(members)})", _FIX
                )
            for suffix, data in members.items():
                (tmp / member_name(key, suffix)).write_bytes(data)
            keys.append(key)
        (tmp / ".complete").write_text(json.dumps({"shard": str(shard), "keys": keys}))
        try:
            os.replace(tmp, final)
        except OSError:  # another process extracted it first
            if not (final / ".complete").is_file():
                raise
    except DataError:
        raise
    except (tarfile.TarError, OSError, ValueError) as e:
        raise DataError(shard, f"not a readable tar shard ({type(e).__name__}: {e})", _FIX) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    for old in cache.glob(f"{shard.stem}-*"):  # earlier extractions of a since-rewritten shard
        if old != final and re.fullmatch(r"\d+-\d+", old.name.removeprefix(f"{shard.stem}-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _refs_from(folder: Path, shard: Path, split: str) -> list[SampleRef]:
    info = json.loads((folder / ".complete").read_text())
    refs = []
    for key in info["keys"]:
        image = next(
            folder / member_name(key, s) for s in IMAGE_SUFFIXES if (folder / member_name(key, s)).is_file()
        )
        paths: dict[str, Path] = {"image": image}
        for suffix, kind in MEMBER_KINDS.items():
            if (folder / member_name(key, suffix)).is_file():
                paths[kind] = folder / member_name(key, suffix)
        if (folder / member_name(key, AGREE_MEMBER)).is_file():
            paths[AGREE_KIND] = folder / member_name(key, AGREE_MEMBER)
        meta_path = folder / member_name(key, META_MEMBER)
        try:
            sample_meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{shard}:{key}.json", f"metadata is not JSON ({e})", _FIX) from None
        recorded = sample_meta.get("source")
        source: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        meta: dict[str, Any] = {
            "dataset": "shards",
            "split": split,
            "shard": str(shard),
            "source_key": sample_meta.get("source_key", key),
            "variant": sample_meta.get("variant", ""),
            # a synthetic sample's weather is its variant (fog, night, ...); a real reference
            # written to shards keeps its source's weather when recorded. Shards written before
            # the field was renamed from "condition" record it under the old name: read either.
            "weather": source.get("weather", source.get("condition", "clear"))
            if sample_meta.get("variant") in (None, "", "ref")
            else sample_meta["variant"],
        }
        for k in ("city", "sequence"):
            if k in source:
                meta[k] = source[k]
        for k in ("image_size", "label_size"):
            if k in sample_meta:
                meta[k] = sample_meta[k]
        refs.append(SampleRef(key, paths, meta))
    return refs


def list_shards(
    root: str | Path,
    split: str = "train",
    *,
    on_error: OnError = "raise",
    cache: str | Path | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> ReadResult:
    """Every sample of the shards under ``root`` (see module doc) as SampleRefs, sorted by key.

    A corrupt, compressed or truncated shard, a member above ``max_member_bytes``, a sample
    without image or metadata, or a key found in two shards raises ``DataError`` naming the
    shard (``on_error="skip"``: the shard, or the duplicate, is reported in ``ReadResult.bad``
    and the rest is listed).
    """
    paths = shard_paths(root, split)
    cache_dir = Path(cache) if cache is not None else paths[0].parent / ".extracted"
    refs: dict[str, SampleRef] = {}
    bad: list[BadSample] = []
    for shard in paths:
        try:
            found = _refs_from(extract_shard(shard, cache_dir, max_member_bytes), shard, split)
        except DataError as e:
            if on_error == "raise":
                raise
            bad.append(BadSample(e.path, str(e)))
            continue
        for ref in found:
            if ref.key in refs:
                dup = DataError(
                    shard,
                    f"sample {ref.key!r} is also in {refs[ref.key].meta['shard']}",
                    "list each sample in one shard only (two jobs' shards in one folder?)",
                )
                if on_error == "raise":
                    raise dup
                bad.append(BadSample(shard, str(dup)))
                continue
            refs[ref.key] = ref
    return ReadResult([refs[k] for k in sorted(refs)], bad)


__all__ = [
    "check_complete",
    "check_member_size",
    "check_member_sizes",
    "check_plain_tar",
    "extract_shard",
    "list_shards",
    "shard_paths",
]
