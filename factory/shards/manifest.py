"""The Parquet manifest: one row per sample attempt, written as one part file per shard.

Why parts: several actors finish shards concurrently and a job may be killed at any moment.
Each shard's rows go to their own Parquet file, written atomically (temporary name, fsync,
rename) right AFTER the shard itself was renamed into place. So "a part exists" means "the
shard is complete", a rerun can trust it, and nothing is ever appended to a shared file.
A shard redone by a rerun replaces its part (same name), so there is exactly one part per shard.
A rerun does not take a part on trust: ``factory.jobs.plan.verify_shard`` checks it against the
tar (members and checksums) before the shard is skipped.

The folder is a ``factory.storage.Store``: a local folder (temporary name + rename) or a prefix
on an object store (one PUT per part, which is atomic there). A part records in its Parquet
footer the size of its tar (``TAR_BYTES``) and the digest of its keys (``KEYS_DIGEST``): checks
that cost no read of the tar nor of the part's rows (``resume_check: size``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from factory.data.sample import check_key
from factory.shards.writer import remove_stale_temporaries
from factory.storage import Store, open_store

Status = Literal["ok", "rejected", "failed"]
STATUSES = ("ok", "rejected", "failed")
TAR_BYTES = b"lumen.tar_bytes"  # Parquet key-value metadata of a part: its shard's size in bytes
KEYS_DIGEST = b"lumen.keys_sha256"  # ... and the sha256 of its sorted keys (``keys_digest``)


def keys_digest(keys: Iterable[str]) -> str:
    """The sha256 of a set of sample keys (sorted, newline-joined): what a part's footer records
    of the keys it holds, so a resume check compares it with the plan without reading the rows."""
    h = hashlib.sha256()
    for key in sorted(set(keys)):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class PartFooter:
    """What a part's Parquet footer records (None in parts written before it was recorded)."""

    tar_bytes: int | None
    keys_sha256: str | None


@dataclass
class ManifestRow:
    """One attempt at one sample. ``checksums``/``timings`` are stored as JSON strings."""

    key: str
    source_key: str
    variant: str
    shard: str
    status: Status
    reason: str = ""
    seed: int = -1
    attempt: int = 0
    run_id: str = ""
    worker: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.status not in STATUSES:
            raise ValueError(f"manifest status must be one of {STATUSES}, got {self.status!r}")


SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_key", pa.string()),
        ("variant", pa.string()),
        ("shard", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("seed", pa.int64()),
        ("attempt", pa.int32()),
        ("run_id", pa.string()),
        ("worker", pa.string()),
        ("checksums", pa.string()),
        ("timings", pa.string()),
    ]
)


def rows_to_table(rows: Iterable[ManifestRow]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for r in rows:
        d = asdict(r)
        d["checksums"] = json.dumps(r.checksums, sort_keys=True)
        d["timings"] = json.dumps(r.timings, sort_keys=True)
        for name in SCHEMA.names:
            cols[name].append(d[name])
    return pa.table(cols, schema=SCHEMA)


class Manifest:
    """A folder of Parquet parts (``<shard>.parquet``); read as one table.

    ``folder``: a local folder, an fsspec URI, or a ``factory.storage.Store``.
    """

    def __init__(self, folder: str | Path | Store):
        self.store = open_store(folder)
        self.folder = self.store.local_path()  # None on an object store

    @staticmethod
    def part_name(shard: str) -> str:
        return f"{Path(shard).stem}.parquet"

    def part_path(self, shard: str) -> Path:
        """The local file of a shard's part (a local manifest only; see ``read_rows``)."""
        if self.folder is None:
            raise ValueError(f"{self.store.location} is not a local folder: read its parts with read_rows")
        return self.folder / self.part_name(shard)

    def write_part(self, shard: str, rows: Iterable[ManifestRow], tar_bytes: int | None = None) -> str:
        """Atomically write (or replace) the rows of one shard; ``tar_bytes``: the size of the
        shard's tar, recorded in the part's metadata. Returns where the part is."""
        table = rows_to_table(rows)
        bad = [s for s in table.column("shard").to_pylist() if s != shard]
        if bad:
            raise ValueError(f"rows of shard {shard} name another shard: {bad[0]}")
        meta = {KEYS_DIGEST: keys_digest(table.column("key").to_pylist()).encode()}
        if tar_bytes is not None:
            meta[TAR_BYTES] = str(tar_bytes).encode()
        table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        name = self.part_name(shard)
        self.store.put_bytes(name, buf.getvalue())
        return self.store.where(name)

    def parts(self) -> list[str]:
        """The names of the committed parts (``shard-000000.parquet``, ...), sorted."""
        return [n for n in self.store.listdir() if n.endswith(".parquet") and not n.startswith(".")]

    def done_shards(self) -> set[str]:
        """Shards whose part is committed (the part is written after the shard is renamed)."""
        return {Path(n).stem for n in self.parts()}

    def read_rows(self, shard: str) -> tuple[list[dict], int | None]:
        """One shard's rows as dicts (``checksums``/``timings`` parsed) and the tar size its part
        records (None in parts written before it was recorded); raises on a damaged file."""
        with self.store.open(self.part_name(shard)) as f:
            table = pq.read_table(f)
        recorded = (table.schema.metadata or {}).get(TAR_BYTES)
        return _parse(table.cast(SCHEMA).to_pylist()), int(recorded) if recorded is not None else None

    def read_footer(self, shard: str) -> PartFooter:
        """A part's recorded tar size and keys digest, from its footer alone (no row is read:
        the cheap resume check); raises on a damaged file."""
        with self.store.open(self.part_name(shard)) as f:
            meta = pq.read_schema(f).metadata or {}
        size, keys = meta.get(TAR_BYTES), meta.get(KEYS_DIGEST)
        return PartFooter(
            int(size) if size is not None else None, keys.decode() if keys is not None else None
        )

    @staticmethod
    def read_part(path: str | Path) -> list[dict]:
        """One part's rows as dicts (``checksums``/``timings`` parsed); raises on a damaged file."""
        return _parse(pq.read_table(path, schema=SCHEMA).to_pylist())

    def read(self) -> pa.Table:
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table()
        tables = []
        for name in parts:
            with self.store.open(name) as f:
                tables.append(pq.read_table(f, schema=SCHEMA))
        return pa.concat_tables(tables)

    def rows(self) -> list[dict]:
        """All rows as dicts, with ``checksums``/``timings`` parsed back from JSON."""
        return _parse(self.read().to_pylist())

    def done_keys(self) -> set[str]:
        """Keys whose final status is recorded in a committed part (ok, rejected or failed).

        A failed or rejected sample is done too: rerunning the same config would fail the same
        way (a corrupt file, a deterministic seed); fix the input and delete its part to redo it.
        """
        table = self.read()
        return set(table.column("key").to_pylist())

    def accepted_keys(self) -> set[str]:
        table = self.read()
        keys = table.column("key").to_pylist()
        status = table.column("status").to_pylist()
        return {k for k, s in zip(keys, status) if s == "ok"}

    def remove_part(self, shard: str) -> None:
        self.store.remove(self.part_name(shard))

    def remove_stale_temporaries(self) -> list[Path]:
        """Leftovers of killed writers (local folders only: nothing temporary goes to an object store)."""
        return remove_stale_temporaries(self.folder) if self.folder is not None else []


def _parse(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["checksums"] = json.loads(r["checksums"])
        r["timings"] = json.loads(r["timings"])
    return rows


__all__ = [
    "KEYS_DIGEST",
    "SCHEMA",
    "STATUSES",
    "TAR_BYTES",
    "Manifest",
    "ManifestRow",
    "PartFooter",
    "keys_digest",
    "rows_to_table",
]
