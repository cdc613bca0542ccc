"""Webdataset shards (atomic, labels copied byte for byte) and the Parquet manifest (resume).

The member format (``LABEL_MEMBERS``, ``read_shard_samples``) lives in factory.data.members,
shared with the readers; it is re-exported here for the tests and tools that read our shards.
"""

from factory.data.members import LABEL_MEMBERS, read_shard_samples
from factory.shards.manifest import SCHEMA, STATUSES, Manifest, ManifestRow
from factory.shards.writer import (
    ShardConfig,
    ShardWriter,
    WrittenSample,
    encode_image,
    label_files,
    remove_stale_temporaries,
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
    "encode_image",
    "label_files",
    "read_shard_samples",
    "remove_stale_temporaries",
]
