"""Decoding and validating the files of a sample: PNGs and the Cityscapes JSON files.

Every check raises ``DataError(path, problem, fix)``. Readers call these through
``load_sample``; they are separate so each check reads on its own and can be tested alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from factory.data.labels import IGNORE_INDEX, INSTANCE_IDS, MAX_LABEL_ID
from factory.data.sample import DataError

_REDOWNLOAD = "re-extract or regenerate this file"


def read_png(path: Path, *, expect: str) -> np.ndarray:
    """Decode a PNG fully (a truncated file raises instead of returning half an image).

    expect: "rgb" (HxWx3 uint8), "gray8" (HxW uint8) or "gray16" (HxW uint16; 8-bit accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, "file does not exist", "check the dataset root and that the download is complete"
        )
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Image.DecompressionBombError as e:
        # a header claiming e.g. 40000x40000 pixels: refused before anything is inflated
        raise DataError(path, f"refused, image too large to be a dataset frame: {e}", _REDOWNLOAD) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            path, f"cannot be decoded as an image (truncated or corrupt?): {e}", _REDOWNLOAD
        ) from None
    if expect == "rgb":
        if mode == "RGBA":
            arr = arr[..., :3]
        elif mode != "RGB":
            raise DataError(
                path, f"expected an 8-bit RGB image, got PIL mode {mode}", "store images as RGB PNGs"
            )
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if expect == "gray8":
        if mode not in ("L", "P"):
            raise DataError(
                path,
                f"expected a single-channel 8-bit label map, got PIL mode {mode} shape {arr.shape}",
                "label maps hold one id per pixel (not a colour image); use the *_labelIds.png file",
            )
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if expect == "gray16":
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.ascontiguousarray(arr).astype(np.uint16 if mode != "I" else np.int32)
        if mode == "L":
            return arr.astype(np.uint16)
        raise DataError(path, f"expected a single-channel 16-bit PNG, got PIL mode {mode}", _REDOWNLOAD)
    raise ValueError(f"read_png: unknown expect={expect!r}")


def check_size(path: Path, arr: np.ndarray, image_size: tuple[int, int], image_path: Path) -> None:
    """Labels must have exactly the image's height and width."""
    if tuple(arr.shape[:2]) != tuple(image_size):
        h, w = arr.shape[:2]
        raise DataError(
            path,
            f"label size {h}x{w} differs from the image {image_path.name} ({image_size[0]}x{image_size[1]})",
            "labels must be at the image's resolution; resize the image (never the labels) or "
            "pair the right files",
        )


def looks_like_trainids(values: np.ndarray, counts: np.ndarray) -> bool:
    """A trainIds map: all values <= 18 or 255, and either 255 (ignore) present, or most pixels
    in 0..6 (road/sidewalk/building/... as trainIds; as labelIds 0..6 are rare void classes)."""
    valid = values[values != IGNORE_INDEX]
    if valid.size == 0 or valid.max() > 18:
        return False
    if IGNORE_INDEX in values and valid.size >= 1:
        return True
    low = counts[(values <= 6)].sum()
    return valid.size >= 2 and low / max(counts.sum(), 1) > 0.5


def check_labelids(path: Path, arr: np.ndarray) -> None:
    """Cityscapes labelIds: 0..33 (255 tolerated for -1 'license plate'); reject trainIds maps."""
    values, counts = np.unique(arr, return_counts=True)
    if looks_like_trainids(values, counts):
        raise DataError(
            path,
            f"looks like a trainIds map (values {values.tolist()}), but labelIds (0..{MAX_LABEL_ID}) were expected",
            "point the labelids path at *_labelIds.png, or declare this file as labeltrainids",
        )
    bad = values[(values > MAX_LABEL_ID) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            path,
            f"values {bad[:8].tolist()} are outside Cityscapes labelIds 0..{MAX_LABEL_ID}",
            "this is not a Cityscapes labelIds map; convert it with the cityscapesscripts label table",
        )


def check_trainids(path: Path, arr: np.ndarray) -> None:
    """trainIds: 0..18 or 255 (ignore). A map with ids 19..33 is a labelIds map."""
    values = np.unique(arr)
    bad = values[(values > 18) & (values != IGNORE_INDEX)]
    if bad.size:
        hint = " (it looks like a labelIds map)" if bad.max() <= MAX_LABEL_ID else ""
        raise DataError(
            path,
            f"values {bad[:8].tolist()} are outside trainIds 0..18/255{hint}",
            "convert with factory.data.labels.id_to_trainid or cityscapesscripts' createTrainIdLabelImgs",
        )


def check_instanceids(path: Path, arr: np.ndarray, labelids: np.ndarray | None) -> None:
    """instanceIds: label id (< 1000) or id*1000+k for instance classes; class agrees with labelIds."""
    cls = np.where(arr >= 1000, arr // 1000, arr)
    values = np.unique(cls)
    if values.max() > MAX_LABEL_ID:
        raise DataError(
            path, f"class ids up to {int(values.max())} are outside 0..{MAX_LABEL_ID}", _REDOWNLOAD
        )
    inst_classes = np.unique(cls[arr >= 1000])
    bad = [int(c) for c in inst_classes if c not in INSTANCE_IDS]
    if bad:
        raise DataError(path, f"instances (id*1000+k) for classes {bad} that have no instances", _REDOWNLOAD)
    if labelids is not None and labelids.shape == arr.shape:
        differ = int((cls != labelids).sum())
        if differ:
            raise DataError(
                path,
                f"{differ} pixels name a different class than the labelIds map",
                "instanceIds and labelIds must come from the same annotation; regenerate one from the other",
            )


def read_json(path: Path, *, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            path, "file does not exist", "check the dataset root and that the download is complete"
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"malformed {what} json: {e}", _REDOWNLOAD) from None
    if not isinstance(data, dict):
        raise DataError(
            path, f"malformed {what} json: top level is {type(data).__name__}, not an object", _REDOWNLOAD
        )
    return data


def _is_numbers(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(x, int | float) for x in v)


def check_boxes3d(path: Path, data: dict[str, Any]) -> None:
    """gtBbox3d: imgWidth/imgHeight, objects with label, 2d amodal box and 3d center/dimensions/rotation."""
    fix = "gtBbox3d files follow cityscapesscripts' CsBbox3d format; regenerate or fix this file"
    for key in ("imgWidth", "imgHeight", "objects"):
        if key not in data:
            raise DataError(path, f"malformed gtBbox3d json: missing key {key!r}", fix)
    if not isinstance(data["objects"], list):
        raise DataError(path, "malformed gtBbox3d json: 'objects' is not a list", fix)
    for i, obj in enumerate(data["objects"]):
        where = f"objects[{i}]"
        if not isinstance(obj, dict) or "label" not in obj or "3d" not in obj or "2d" not in obj:
            raise DataError(path, f"malformed gtBbox3d json: {where} lacks 'label', '2d' or '3d'", fix)
        b3, b2 = obj["3d"], obj["2d"]
        for key, n in (("center", 3), ("dimensions", 3), ("rotation", 4)):
            if not isinstance(b3, dict) or not _is_numbers(b3.get(key), n):
                raise DataError(path, f"malformed gtBbox3d json: {where}.3d.{key} must be {n} numbers", fix)
        if not isinstance(b2, dict) or not _is_numbers(b2.get("amodal"), 4):
            raise DataError(path, f"malformed gtBbox3d json: {where}.2d.amodal must be 4 numbers", fix)


def check_camera(path: Path, data: dict[str, Any]) -> None:
    """camera.json: extrinsic.baseline and intrinsic fx, fy, u0, v0 (numbers, baseline and fx > 0)."""
    ext, intr = data.get("extrinsic"), data.get("intrinsic")
    if not (
        isinstance(ext, dict)
        and isinstance(intr, dict)
        and all(isinstance(intr.get(k), int | float) for k in ("fx", "fy", "u0", "v0"))
        and isinstance(ext.get("baseline"), int | float)
    ):
        raise DataError(
            path,
            "malformed camera json: needs extrinsic.baseline and intrinsic.fx/fy/u0/v0 numbers",
            "use the Cityscapes camera/*_camera.json format",
        )
    if ext["baseline"] <= 0 or intr["fx"] <= 0:
        raise DataError(
            path, "camera baseline and fx must be positive", "use the Cityscapes camera json format"
        )
