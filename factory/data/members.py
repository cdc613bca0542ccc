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
- ``<key>.agree.png``: per-pixel agreement of a judge with the reused label (optional).

``read_shard_samples`` iterates the raw members with stock webdataset, so the format is read
the way anyone else's tools would read it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def member_name(key: str, suffix: str) -> str:
    """The tar member name of one file of a sample: ``<key>.<suffix>``."""
    return f"{key}.{suffix}"


def split_member(name: str) -> tuple[str, str]:
    """``<key>.<suffix>`` -> (key, suffix), split at the first '.' as webdataset does."""
    key, _, suffix = name.partition(".")
    return key, suffix


def read_shard_samples(paths: Sequence[str | Path]) -> Iterator[dict[str, Any]]:
    """Iterate raw samples of our shards with stock ``webdataset.WebDataset`` (no decoding).

    Each item is webdataset's dict: ``__key__``, ``__url__`` and one ``bytes`` value per member
    suffix (``png``, ``labelids.png``, ``json``, ...).
    """
    import webdataset as wds

    urls = [str(p) for p in paths]
    if not urls:
        return iter(())
    return iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


__all__ = [
    "AGREE_MEMBER",
    "IMAGE_SUFFIXES",
    "LABEL_MEMBERS",
    "LAYOUT_MEMBER",
    "MEMBER_KINDS",
    "META_MEMBER",
    "ImageFormat",
    "member_name",
    "read_shard_samples",
    "split_member",
]
