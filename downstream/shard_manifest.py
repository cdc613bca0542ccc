"""Check what a reader found in a shard against what the factory recorded for it.

A tar cut exactly at a member boundary (and given an end-of-archive marker) is a valid tar with
fewer samples; read alone, nothing in it says samples are missing, and training would silently
use what is left. The generation job records every attempt in a Parquet manifest beside its
shards - ``<out>/shards/<name>.tar`` and ``<out>/manifest/<name>.parquet``
(factory.shards.manifest, one part per shard, written after the tar) - and its ``ok`` rows are
exactly the samples in the tar. So when that manifest folder exists, each shard's keys must be
its part's ``ok`` keys; shards without one beside them (reference shards from
``downstream.segformer.make_shards``, a copied folder) have nothing to check against.

Both downstream readers use this: the SegFormer index (downstream.segformer.shards) and the
multi-task listing (downstream.multitask.data). factory.data may not import factory.shards,
so the check lives here, on the downstream side.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from factory.data.sample import DataError
from factory.shards.manifest import Manifest

MANIFEST_FOLDER = "manifest"  # beside the job's "shards" folder, as factory.jobs writes them
_RERUN = (
    "rerun the generation job with the same config: its resume verifies every shard against "
    "its manifest part and redoes the ones that do not match"
)


def manifest_part(shard: str | Path) -> Path | None:
    """The manifest part of ``shard`` (``<out>/shards/x.tar`` -> ``<out>/manifest/x.parquet``),
    or None when no manifest folder sits beside the shard's folder."""
    folder = Path(shard).parent.parent / MANIFEST_FOLDER
    return Manifest(folder).part_path(str(shard)) if folder.is_dir() else None


def recorded_keys(shard: str | Path) -> set[str] | None:
    """The keys the manifest beside ``shard`` records as ok for it; None without a manifest.

    A manifest folder without this shard's part means the job never committed the shard (the
    part is written right after the tar): an error, like an unreadable part.
    """
    part = manifest_part(shard)
    if part is None:
        return None
    if not part.is_file():
        raise DataError(
            shard,
            f"the job's manifest {part.parent} has no part for this shard ({part.name}): the "
            "shard was never committed, so nothing says which samples it should hold",
            _RERUN,
        )
    try:
        rows = Manifest.read_part(part)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(part, f"manifest part is not readable Parquet ({e})", _RERUN) from None
    return {r["key"] for r in rows if r["status"] == "ok"}


def check_shard_keys(shard: str | Path, found: Iterable[str]) -> None:
    """DataError naming ``shard`` when its samples are not the ones its manifest part records."""
    recorded = recorded_keys(shard)
    if recorded is None:
        return
    keys = set(found)
    missing = sorted(recorded - keys)
    extra = sorted(keys - recorded)
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} recorded sample(s) missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} sample(s) the manifest does not record as ok, e.g. {extra[:3]}")
    raise DataError(
        shard,
        f"holds {len(keys)} samples but its manifest part {manifest_part(shard)} records "
        f"{len(recorded)} ({'; '.join(problems)}): the shard was cut short or replaced",
        _RERUN,
    )


__all__ = ["MANIFEST_FOLDER", "check_shard_keys", "manifest_part", "recorded_keys"]
