"""The Parquet manifest: one row per sample attempt, written as one part file per shard.

Why parts: several actors finish shards concurrently and a job may be killed at any moment.
Each shard's rows go to their own Parquet file, written atomically (temporary name, fsync,
rename) right AFTER the shard itself was renamed into place. So "a part exists" means "the
shard is complete", a rerun can trust it, and nothing is ever appended to a shared file.
A shard redone by a rerun replaces its part (same name), so there is exactly one part per shard.
A rerun does not take a part on trust: ``factory.jobs.plan.verify_shard`` checks it against the
tar (members and checksums) before the shard is skipped.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from factory.atomic import atomic_write_bytes
from factory.data.sample import check_key
from factory.shards.writer import remove_stale_temporaries

Status = Literal["ok", "rejected", "failed"]
STATUSES = ("ok", "rejected", "failed")


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
    """A folder of Parquet parts (``<shard>.parquet``); read as one table."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def part_path(self, shard: str) -> Path:
        return self.folder / f"{Path(shard).stem}.parquet"

    def write_part(self, shard: str, rows: Iterable[ManifestRow]) -> Path:
        """Atomically write (or replace) the rows of one shard."""
        table = rows_to_table(rows)
        bad = [s for s in table.column("shard").to_pylist() if s != shard]
        if bad:
            raise ValueError(f"rows of shard {shard} name another shard: {bad[0]}")
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path = self.part_path(shard)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.parquet") if not p.name.startswith("."))

    def done_shards(self) -> set[str]:
        """Shards whose part is committed (the part is written after the shard is renamed)."""
        return {p.stem for p in self.parts()}

    @staticmethod
    def read_part(path: str | Path) -> list[dict]:
        """One part's rows as dicts (``checksums``/``timings`` parsed); raises on a damaged file."""
        rows = pq.read_table(path, schema=SCHEMA).to_pylist()
        for r in rows:
            r["checksums"] = json.loads(r["checksums"])
            r["timings"] = json.loads(r["timings"])
        return rows

    def read(self) -> pa.Table:
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])

    def rows(self) -> list[dict]:
        """All rows as dicts, with ``checksums``/``timings`` parsed back from JSON."""
        out = self.read().to_pylist()
        for r in out:
            r["checksums"] = json.loads(r["checksums"])
            r["timings"] = json.loads(r["timings"])
        return out

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

    def remove_stale_temporaries(self) -> list[Path]:
        return remove_stale_temporaries(self.folder)


__all__ = ["SCHEMA", "STATUSES", "Manifest", "ManifestRow", "rows_to_table"]
