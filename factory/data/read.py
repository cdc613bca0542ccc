"""Read our shards into numpy (or torch) with every member's true values: the reading API.

Why this exists: a stock image decoder converts every PNG to 8-bit (webdataset's
``.decode("pil")``/``"rgb8"``/``"l8"`` all do), which clips ``instanceids.png`` (ids up to
``26000`` = car instance 0) and ``disparity.png`` (raw values up to 65535) to 255 without a
warning. Here each member is decoded as what it is (docs/shards.md lists them):

- a PNG/JPEG/WebP member keeps its own mode: 8-bit RGB -> HxWx3 uint8, 8-bit grey (``L``)
  -> HxW uint8, 16-bit grey (``I;16``) -> HxW uint16 (never converted to another mode);
- a JSON member -> the parsed object (``dict``);
- a ``.npy`` member -> ``np.load(..., allow_pickle=False)`` (a pickle in a shard is refused);
- a member this module does not know -> its bytes, unchanged.

Members are read by stock webdataset (``factory.data.members.read_shard_samples``), so this
module adds decoding only. A shard may be a local path or an fsspec URI (``s3://bucket/run/
shards/shard-000000.tar``; ``storage_options`` go to fsspec, credentials come from the
environment as for the job that wrote it). Each shard is checked first, like every other reader of ours
(``factory.data.shards``): a compressed file named ``.tar``, a truncated tar or a member whose
header declares more than ``max_member_bytes`` is refused before webdataset reads it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from factory.data.members import MAX_MEMBER_BYTES, member_name, read_shard_samples
from factory.data.sample import DataError
from factory.data.shards import check_complete, check_member_sizes, check_plain_tar

_FIX = "re-write the shard (rerun the job that made it)"
_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
# PIL modes of 16-bit single-channel PNGs (byte order in the name); decoded as native uint16
_UINT16_MODES = ("I;16", "I;16L", "I;16B")


def decode_image(data: bytes, where: str) -> np.ndarray:
    """An image member's pixels at their own bit depth (see the module doc); DataError if it
    does not decode (a truncated file, or a decompression bomb: a header claiming e.g.
    40000x40000 pixels is refused by PIL before anything is inflated)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Image.DecompressionBombError as e:
        raise DataError(where, f"image refused, too large to be a dataset frame: {e}", _FIX) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(where, f"image does not decode ({e})", _FIX) from None
    if mode in _UINT16_MODES:
        return arr.astype(np.uint16)  # native byte order (PIL's I;16B arrives as big-endian)
    return np.ascontiguousarray(arr)


def decode_member(suffix: str, data: bytes, where: str = "") -> Any:
    """One member (its suffix after the key, e.g. ``instanceids.png``) decoded by its last
    extension; ``where`` names it in errors."""
    where = where or suffix
    extension = suffix.rsplit(".", 1)[-1].lower()
    if extension in _IMAGE_EXTENSIONS:
        return decode_image(data, where)
    if extension == "json":
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(where, f"not JSON ({e})", _FIX) from None
    if extension == "npy":
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # a pickled object array, or not an .npy
            raise DataError(where, f"not a plain .npy array ({e})", _FIX) from None
    return data


def iter_samples(
    paths: Sequence[str | Path],
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every sample of the shards ``paths`` (local paths or fsspec URIs), in order, decoded.

    Each item is webdataset's dict with decoded values: ``__key__``, ``__url__`` and one entry
    per member suffix (``png``, ``labelids.png``, ``instanceids.png``, ``json``, ...).
    """
    for path in paths:
        check_plain_tar(path, storage_options)
        check_complete(path, storage_options)
        check_member_sizes(path, max_member_bytes, storage_options)
        for raw in read_shard_samples([path], storage_options):
            key = raw["__key__"]
            sample: dict[str, Any] = {"__key__": key, "__url__": str(path)}
            for suffix, data in raw.items():
                if not suffix.startswith("__"):
                    sample[suffix] = decode_member(suffix, data, f"{path}:{member_name(key, suffix)}")
            yield sample


def to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    """A decoded sample with its arrays as torch tensors (same shapes: images stay HxWx3).

    uint16 arrays (instanceids, disparity) become int32: torch's uint16 supports few
    operations, and every 16-bit value fits in int32 exactly. Read-only arrays (PIL's) are
    copied, since a tensor may be written to. Other values are kept as they are.
    """
    import torch

    out: dict[str, Any] = {}
    for name, value in sample.items():
        if isinstance(value, np.ndarray):
            arr = value.astype(np.int32) if value.dtype == np.uint16 else value
            out[name] = torch.from_numpy(np.require(arr, requirements=["C", "W"]))
        else:
            out[name] = value
    return out


__all__ = ["decode_image", "decode_member", "iter_samples", "to_torch"]
