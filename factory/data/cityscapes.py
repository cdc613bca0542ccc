"""Cityscapes reader: list samples from the official folders, load and validate one sample.

Layout (root is the folder holding ``leftImg8bit/``)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_{labelIds,instanceIds,color,labelTrainIds}.png, _polygons.json
    disparity/<split>/<city>/<stem>_disparity.png      (16-bit, p = d * 256 + 1, 0 = invalid)
    camera/<split>/<city>/<stem>_camera.json
    gtBbox3d/<split>/<city>/<stem>_gtBbox3d.json

Any label folder may be absent (then that kind is absent for every sample). When a folder is
present for the split, every image must have its file there: a missing one is reported (or
skipped with ``on_error="skip"``), because silently training on a partial label set is worse.
``labelTrainIds`` (written by cityscapesscripts' createTrainIdLabelImgs) is optional per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from factory.data import decode
from factory.data.sample import BadSample, DataError, ReadResult, Sample, SampleRef, check_key
from factory.data.tree import LOCAL, Tree

OnError = Literal["raise", "skip"]

# kind -> (top folder, file suffix, required when the folder exists for the split)
_CS_FILES: dict[str, tuple[str, str, bool]] = {
    "labelids": ("gtFine", "_gtFine_labelIds.png", True),
    "instanceids": ("gtFine", "_gtFine_instanceIds.png", False),
    "labeltrainids": ("gtFine", "_gtFine_labelTrainIds.png", False),
    "color": ("gtFine", "_gtFine_color.png", False),
    "polygons": ("gtFine", "_gtFine_polygons.json", False),
    "disparity": ("disparity", "_disparity.png", True),
    "camera": ("camera", "_camera.json", True),
    "boxes3d": ("gtBbox3d", "_gtBbox3d.json", True),
}
_IMAGE_SUFFIX = "_leftImg8bit.png"


# What writes the procedural city (Makefile): its folders are data/procedural/{cityscapes,acdc}.
MAKE_CITY = "run `make city` to write the procedural city under data/procedural/"


def missing_root_fix(root: Path, expected: str) -> str:
    """The fix for a dataset root that does not exist: a procedural-city path (one with a
    ``procedural`` folder in it, as every shipped config's) is one ``make city`` away; any
    other root is the user's copy of the real dataset, named by what it must contain."""
    if "procedural" in root.parts:
        return f"{MAKE_CITY}, or pass the folder that contains {expected}"
    return f"pass the folder that contains {expected}"


def _check_root(root: Path, split: str, tree: Tree = LOCAL) -> Path:
    """The split's image folder, or a DataError saying which folder was expected."""
    if not tree.is_dir(root):
        raise DataError(root, "Cityscapes root does not exist", missing_root_fix(root, "leftImg8bit/"))
    images = root / "leftImg8bit"
    if not tree.is_dir(images):
        hint = "pass the folder that contains leftImg8bit/ and gtFine/"
        if tree.is_dir(root / "cityscapes" / "leftImg8bit"):
            hint = f"pass {root / 'cityscapes'} (it contains leftImg8bit/)"
        elif root.name == "leftImg8bit":
            hint = f"pass its parent {root.parent}"
        raise DataError(root, "not a Cityscapes root: expected a leftImg8bit/ folder inside it", hint)
    split_dir = images / split
    if not tree.is_dir(split_dir):
        found = [p.name for p in tree.subdirs(images)]
        raise DataError(
            split_dir, f"split {split!r} not found (splits present: {found})", "choose one of those"
        )
    return split_dir


def _fail(path: Path, problem: str, fix: str, on_error: OnError, bad: list[BadSample]) -> None:
    if on_error == "raise":
        raise DataError(path, problem, fix)
    bad.append(BadSample(Path(path), str(DataError(path, problem, fix))))


def list_cityscapes(
    root: str | Path,
    split: str,
    *,
    cities: Sequence[str] | None = None,
    on_error: OnError = "raise",
    tree: Tree = LOCAL,
) -> ReadResult:
    """List every image of ``split`` with the label files found for it, sorted by key.

    on_error="raise" stops at the first bad sample; "skip" leaves it out and reports it in
    ``ReadResult.bad``. An empty or wrong root always raises (nothing could be read at all).
    ``tree``: where the folders are looked up (factory.data.tree: the disk, or a URI's listing).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    root = Path(root)
    split_dir = _check_root(root, split, tree)
    city_dirs = tree.subdirs(split_dir)
    if cities is not None:
        missing = sorted(set(cities) - {p.name for p in city_dirs})
        if missing:
            raise DataError(
                split_dir, f"cities {missing} not found", f"choose among {[p.name for p in city_dirs]}"
            )
        city_dirs = [p for p in city_dirs if p.name in set(cities)]
    images = [f for d in city_dirs for f in tree.files(d, _IMAGE_SUFFIX)]
    if not images:
        raise DataError(
            split_dir,
            f"no *{_IMAGE_SUFFIX} images found under {split_dir}/<city>/",
            "check that leftImg8bit was extracted completely",
        )
    present = {kind: tree.is_dir(root / top / split) for kind, (top, _, _) in _CS_FILES.items()}
    refs: list[SampleRef] = []
    bad: list[BadSample] = []
    for img in images:
        stem = img.name[: -len(_IMAGE_SUFFIX)]
        city = img.parent.name
        try:
            key = check_key(stem)
        except ValueError as e:
            _fail(img, str(e), "rename the file", on_error, bad)
            continue
        paths: dict[str, Path] = {"image": img}
        ok = True
        for kind, (top, suffix, required) in _CS_FILES.items():
            path = root / top / split / city / f"{stem}{suffix}"
            if tree.is_file(path):
                paths[kind] = path
            elif present[kind] and required:
                _fail(
                    path,
                    f"missing {kind} label for image {img.name}",
                    f"restore the file, or remove the image, or remove {top}/{split} to drop this label type",
                    on_error,
                    bad,
                )
                ok = False
                break
        if ok:
            refs.append(
                SampleRef(
                    key, paths, {"dataset": "cityscapes", "split": split, "city": city, "weather": "clear"}
                )
            )
    return ReadResult(refs, bad)


def label_size_of(ref: SampleRef, image_size: tuple[int, int], image_path: Path) -> tuple[int, int]:
    """(H, W) the labels of ``ref`` must have: the image's, unless the metadata records both sizes."""
    recorded = ref.meta.get("label_size")
    if recorded is None:
        return image_size
    declared = tuple(int(v) for v in ref.meta.get("image_size", image_size))
    if declared != tuple(image_size):
        raise DataError(
            image_path,
            f"image is {image_size[0]}x{image_size[1]} but its metadata records image_size "
            f"{declared[0]}x{declared[1]}",
            "the shard was rewritten inconsistently; regenerate it",
        )
    return (int(recorded[0]), int(recorded[1]))


def load_sample(ref: SampleRef, *, labels: bool = True) -> Sample:
    """Decode and validate one sample (Cityscapes or ACDC ref). Raises DataError on bad input.

    Checks: every PNG decodes fully; labels have the image's size - or, for a synthetic shard
    sample generated smaller than its labels (DESIGN.md), the ``label_size`` its metadata records,
    the image then having the recorded ``image_size`` (consumers resize the image, never the
    labels: ``Sample.label_size``); labelIds values are Cityscapes
    labelIds and not a trainIds map; trainIds are 0..18/255; instanceIds agree with labelIds;
    box and camera JSON parse and have the required fields. Colour maps, polygons and ACDC invIds
    are kept by path only (the factory copies label files, it does not re-encode them).
    """
    image_path = ref.paths["image"]
    image = decode.read_png(image_path, expect="rgb")
    sample = Sample(key=ref.key, image=image, paths=dict(ref.paths), meta=dict(ref.meta))
    if not labels:
        return sample
    size = label_size_of(ref, sample.size, image_path)
    p = ref.paths
    if "labelids" in p:
        arr = decode.read_png(p["labelids"], expect="gray8")
        decode.check_size(p["labelids"], arr, size, image_path)
        decode.check_labelids(p["labelids"], arr)
        sample.semantic = arr
    if "labeltrainids" in p:
        arr = decode.read_png(p["labeltrainids"], expect="gray8")
        decode.check_size(p["labeltrainids"], arr, size, image_path)
        decode.check_trainids(p["labeltrainids"], arr)
        sample.trainids = arr
    if "instanceids" in p:
        arr = decode.read_png(p["instanceids"], expect="gray16").astype(np.int32)
        decode.check_size(p["instanceids"], arr, size, image_path)
        decode.check_instanceids(p["instanceids"], arr, sample.semantic)
        sample.instance = arr
    if "disparity" in p:
        arr = decode.read_png(p["disparity"], expect="gray16")
        decode.check_size(p["disparity"], arr, size, image_path)
        sample.disparity = arr.astype(np.uint16)
    if "boxes3d" in p:
        boxes = decode.read_json(p["boxes3d"], what="gtBbox3d")
        decode.check_boxes3d(p["boxes3d"], boxes)
        sample.boxes3d = boxes
    if "camera" in p:
        camera = decode.read_json(p["camera"], what="camera")
        decode.check_camera(p["camera"], camera)
        sample.camera = camera
    return sample


def load_samples(
    refs: Sequence[SampleRef], *, labels: bool = True, on_error: OnError = "raise"
) -> tuple[list[Sample], list[BadSample]]:
    """``load_sample`` over many refs; with on_error="skip" bad ones are reported, not raised."""
    samples: list[Sample] = []
    bad: list[BadSample] = []
    for ref in refs:
        try:
            samples.append(load_sample(ref, labels=labels))
        except DataError as e:
            if on_error == "raise":
                raise
            bad.append(BadSample(e.path, str(e)))
    return samples, bad


def disparity_to_depth(disparity_raw: np.ndarray, camera: dict[str, Any]) -> np.ndarray:
    """Cityscapes 16-bit disparity -> depth in metres (float32); invalid pixels (p <= 1) -> 0.

    d = (p - 1) / 256 px; depth = baseline * fx / d (camera.json: extrinsic.baseline,
    intrinsic.fx at the disparity map's resolution).
    """
    p = np.asarray(disparity_raw).astype(np.float64)
    d = (p - 1.0) / 256.0
    bf = float(camera["extrinsic"]["baseline"]) * float(camera["intrinsic"]["fx"])
    depth = np.zeros(p.shape, np.float64)
    valid = p > 1
    depth[valid] = bf / d[valid]
    return depth.astype(np.float32)


__all__ = ["OnError", "disparity_to_depth", "list_cityscapes", "load_sample", "load_samples"]
