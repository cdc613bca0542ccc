"""The shard member format (DESIGN.md "Shard sample files"): the one place it is stated.

A webdataset shard holds each sample as tar members ``<key>.<suffix>``; webdataset splits a
member name at its first '.', so the key never contains one. The writer (factory.shards) and
every reader (factory.data.shards, downstream.segformer.shards) take the suffixes from here:

- the image: ``<key>.png`` (or ``.jpg`` / ``.webp``, a config choice), 8-bit RGB;
- the reference's label files, copied byte for byte (``LABEL_MEMBERS``: SampleRef.paths kind ->
  suffix). Colour maps and polygons derive from labelIds and are not shipped;
- ``<key>.json``: metadata (source key, variant, prompt, seed, the reference's meta under
  ``source`` (dataset, split, weather, ...), models with their ControlNet condition, scores);
- ``<key>.layout.npy``: a neural layout (float16, N x H/16 x W/16), in layout shards;
- ``<key>.agree.png``: per-pixel agreement of the judge segmenter with the reused label, at the
  label's size, uint8: 1 agrees, 0 disagrees, 255 no label (factory.quality.checks); written
  when the job has a judge (``quality.segmenter``).

``read_shard_samples`` iterates the raw members with stock webdataset, so the format is read
the way anyone else's tools would read it. A shard may also be an fsspec URI (``s3://...``):
webdataset 1.0.2 opens no s3:// itself, so such a shard is opened with fsspec
(factory.storage) and handed to webdataset's own tar expander and key grouping.

A shard is a plain (uncompressed) ustar tar: readers seek to a member's bytes, and check every
member's size in its header before reading it (``MAX_MEMBER_BYTES``). A compressed file named
``.tar`` would be inflated whole by webdataset (it decompresses transparently) before any size
is known - a 205 KB gzip took a reader from 233 to 981 MB - so readers refuse it by its magic
bytes (``compression_of``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

ImageFormat = Literal["png", "jpg", "webp"]
IMAGE_SUFFIXES: tuple[str, ...] = get_args(ImageFormat)

# SampleRef.paths kind -> member suffix of the label files copied into shards
LABEL_MEMBERS: dict[str, str] = {
    "labelids": "labelids.png",
    "instanceids": "instanceids.png",
    "labeltrainids": "labeltrainids.png",
    "disparity": "disparity.png",
    "boxes3d": "boxes3d.json",
    "camera": "camera.json",
}
# member suffix -> SampleRef.paths kind (LABEL_MEMBERS inverted)
MEMBER_KINDS: dict[str, str] = {suffix: kind for kind, suffix in LABEL_MEMBERS.items()}

META_MEMBER = "json"
LAYOUT_MEMBER = "layout.npy"
AGREE_MEMBER = "agree.png"
# members the job computes per synthetic sample (not copied from the reference)
GENERATED_MEMBERS: tuple[str, ...] = (AGREE_MEMBER,)
# SampleRef.paths kind of the judge's agreement map, when a shard sample has one
AGREE_KIND = "agree"


# The first bytes of the compressed formats webdataset/tarfile would inflate transparently.
COMPRESSION_MAGIC: dict[bytes, str] = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
}
# A plain tar's first header carries this magic at byte 257 (ustar, GNU and pax formats).
TAR_MAGIC_OFFSET = 257
TAR_MAGIC = b"ustar"
# The largest member a reader accepts by default: a sample file is a few MB (a 1024x2048 PNG is
# 2-6 MB, its 16-bit disparity 1-3 MB); 64 MiB leaves room for uncompressed 4K images.
MAX_MEMBER_BYTES = 64 * 2**20


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic ``head`` (a file's first bytes) starts with, or None."""
    for magic, name in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def member_name(key: str, suffix: str) -> str:
    """The tar member name of one file of a sample: ``<key>.<suffix>``."""
    return f"{key}.{suffix}"


def split_member(name: str) -> tuple[str, str]:
    """``<key>.<suffix>`` -> (key, suffix), split at the first '.' as webdataset does."""
    key, _, suffix = name.partition(".")
    return key, suffix


def read_shard_samples(
    paths: Sequence[str | Path], storage_options: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Iterate raw samples of our shards with stock ``webdataset.WebDataset`` (no decoding).

    Each item is webdataset's dict: ``__key__``, ``__url__`` and one ``bytes`` value per member
    suffix (``png``, ``labelids.png``, ``json``, ...). A path may be an fsspec URI
    (``storage_options`` go to fsspec).
    """
    import webdataset as wds

    from factory.storage import is_uri

    urls = [str(p) for p in paths]
    if not urls:
        return iter(())
    if not any(is_uri(u) for u in urls):
        return iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    return _read_uris(urls, storage_options)


def _read_uris(urls: Sequence[str], storage_options: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
    """What ``wds.WebDataset`` does for a list of URLs, with fsspec opening each one."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from factory.storage import open_location

    def opened() -> Iterator[dict[str, Any]]:
        for url in urls:
            with open_location(url, storage_options) as stream:
                yield {"url": url, "stream": stream}

    return group_by_keys(tar_file_expander(opened()))


__all__ = [
    "AGREE_MEMBER",
    "GENERATED_MEMBERS",
    "COMPRESSION_MAGIC",
    "IMAGE_SUFFIXES",
    "LABEL_MEMBERS",
    "LAYOUT_MEMBER",
    "MAX_MEMBER_BYTES",
    "MEMBER_KINDS",
    "META_MEMBER",
    "TAR_MAGIC",
    "TAR_MAGIC_OFFSET",
    "ImageFormat",
    "compression_of",
    "member_name",
    "read_shard_samples",
    "split_member",
]
