"""Webdataset shards (atomic, labels copied byte for byte) and the Parquet manifest (resume)."""

from factory.shards.manifest import SCHEMA, STATUSES, Manifest, ManifestRow
from factory.shards.writer import (
    LABEL_MEMBERS,
    ShardConfig,
    ShardWriter,
    WrittenSample,
    atomic_write_bytes,
    encode_image,
    label_files,
    read_shard_samples,
    remove_stale_temporaries,
    sha256,
)

__all__ = [
    "LABEL_MEMBERS",
    "SCHEMA",
    "STATUSES",
    "Manifest",
    "ManifestRow",
    "ShardConfig",
    "ShardWriter",
    "WrittenSample",
    "atomic_write_bytes",
    "encode_image",
    "label_files",
    "read_shard_samples",
    "remove_stale_temporaries",
    "sha256",
]
