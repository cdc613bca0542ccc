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
from pathlib import Path
from typing import Any, Literal

from factory.data.members import IMAGE_SUFFIXES, MEMBER_KINDS, META_MEMBER, member_name, read_shard_samples
from factory.data.sample import BadSample, DataError, ReadResult, SampleRef, check_key

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


def check_complete(path: Path) -> None:
    """A tar ends with two zero blocks; a shard cut short (copy interrupted, disk full) does not.

    webdataset reads a truncated tar without complaint, up to where it was cut, so this is the
    only way to notice samples missing at the end.
    """
    size = path.stat().st_size
    if size < 1024 or size % 512:
        raise DataError(path, f"truncated tar ({size} bytes, not whole 512-byte blocks)", _FIX)
    with open(path, "rb") as f:
        f.seek(size - 1024)
        if f.read(1024).strip(b"\0"):
            raise DataError(path, "truncated tar (no end-of-archive marker)", _FIX)


def extraction_dir(shard: Path, cache: Path) -> Path:
    """Where ``shard`` is extracted: named after the shard's size and mtime (a rewrite = new name)."""
    st = shard.stat()
    return cache / f"{shard.stem}-{st.st_size}-{st.st_mtime_ns}"


def extract_shard(shard: Path, cache: Path) -> Path:
    """Extract ``shard``'s members into their own folder (once) and return that folder."""
    final = extraction_dir(shard, cache)
    if (final / ".complete").is_file():
        return final
    check_complete(shard)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
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
    root: str | Path, split: str = "train", *, on_error: OnError = "raise", cache: str | Path | None = None
) -> ReadResult:
    """Every sample of the shards under ``root`` (see module doc) as SampleRefs, sorted by key.

    A corrupt or truncated shard, a sample without image or metadata, or a key found in two
    shards raises ``DataError`` naming the shard (``on_error="skip"``: the shard, or the
    duplicate, is reported in ``ReadResult.bad`` and the rest is listed).
    """
    paths = shard_paths(root, split)
    cache_dir = Path(cache) if cache is not None else paths[0].parent / ".extracted"
    refs: dict[str, SampleRef] = {}
    bad: list[BadSample] = []
    for shard in paths:
        try:
            found = _refs_from(extract_shard(shard, cache_dir), shard, split)
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


__all__ = ["check_complete", "extract_shard", "list_shards", "shard_paths"]
