"""ACDC reader: list the adverse-weather images with their labels and clear reference images.

Layout (root is the folder holding ``rgb_anon/`` and ``gt/``)::

    rgb_anon/<weather>/<split>/<sequence>/<stem>_rgb_anon.png
    rgb_anon/<weather>/<split>_ref/<sequence>/<stem>_rgb_ref_anon.png     (clear reference)
    gt/<weather>/<split>/<sequence>/<stem>_gt_labelTrainIds.png             (+ _gt_labelIds.png,
                                                   _gt_labelColor.png, _gt_invIds.png when present)

weathers: fog, night, rain, snow. The test split has no ``gt/``: then refs carry no labels.
When ``gt/<weather>/<split>`` exists, each image must have its labelTrainIds file.
Extra paths (not label kinds): ``ref_image`` and ``invids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from factory.data.cityscapes import OnError, _fail, load_sample, missing_root_fix
from factory.data.sample import BadSample, DataError, ReadResult, SampleRef, check_key
from factory.data.tree import LOCAL, Tree

WEATHERS = ("fog", "night", "rain", "snow")
_IMAGE_SUFFIX = "_rgb_anon.png"
# kind -> (file suffix in gt/, required when gt/<weather>/<split> exists)
_GT_FILES = {
    "labeltrainids": ("_gt_labelTrainIds.png", True),
    "labelids": ("_gt_labelIds.png", False),
    "color": ("_gt_labelColor.png", False),
    "invids": ("_gt_invIds.png", False),
}


def _check_root(root: Path, tree: Tree) -> Path:
    if not tree.is_dir(root):
        raise DataError(root, "ACDC root does not exist", missing_root_fix(root, "rgb_anon/ and gt/"))
    images = root / "rgb_anon"
    if not tree.is_dir(images):
        hint = "pass the folder that contains rgb_anon/ and gt/"
        if tree.is_dir(root / "acdc" / "rgb_anon"):
            hint = f"pass {root / 'acdc'} (it contains rgb_anon/)"
        elif root.name == "rgb_anon":
            hint = f"pass its parent {root.parent}"
        raise DataError(root, "not an ACDC root: expected a rgb_anon/ folder inside it", hint)
    return images


def list_acdc(
    root: str | Path,
    split: str,
    *,
    weathers: Sequence[str] = WEATHERS,
    on_error: OnError = "raise",
    tree: Tree = LOCAL,
) -> ReadResult:
    """List ACDC images of ``split`` for ``weathers``, sorted by weather then key. ``tree``:
    where the folders are looked up (factory.data.tree: the disk, or a URI's listing)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    unknown = [w for w in weathers if w not in WEATHERS]
    if unknown:
        raise ValueError(f"unknown ACDC weathers {unknown}; allowed: {list(WEATHERS)}")
    root = Path(root)
    images_root = _check_root(root, tree)
    refs: list[SampleRef] = []
    bad: list[BadSample] = []
    for weather in weathers:
        split_dir = images_root / weather / split
        if not tree.is_dir(split_dir):
            raise DataError(
                split_dir,
                f"ACDC folder for weather {weather!r}, split {split!r} not found",
                f"expected rgb_anon/{weather}/{split}/<sequence>/*{_IMAGE_SUFFIX}; check the root or the weathers",
            )
        images = [f for seq in tree.subdirs(split_dir) for f in tree.files(seq, _IMAGE_SUFFIX)]
        if not images:
            raise DataError(
                split_dir, f"no *{_IMAGE_SUFFIX} images under {split_dir}/<sequence>/", "check the extraction"
            )
        gt_dir = root / "gt" / weather / split
        for img in images:
            stem = img.name[: -len(_IMAGE_SUFFIX)]
            seq = img.parent.name
            try:
                key = check_key(stem)
            except ValueError as e:
                _fail(img, str(e), "rename the file", on_error, bad)
                continue
            paths: dict[str, Path] = {"image": img}
            ref_img = images_root / weather / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png"
            if tree.is_file(ref_img):
                paths["ref_image"] = ref_img
            ok = True
            for kind, (suffix, required) in _GT_FILES.items():
                path = gt_dir / seq / f"{stem}{suffix}"
                if tree.is_file(path):
                    paths[kind] = path
                elif required and tree.is_dir(gt_dir):
                    _fail(
                        path,
                        f"missing {kind} label for image {img.name}",
                        f"restore the file, or remove the image, or remove gt/{weather}/{split}",
                        on_error,
                        bad,
                    )
                    ok = False
                    break
            if ok:
                meta = {"dataset": "acdc", "split": split, "sequence": seq, "weather": weather}
                refs.append(SampleRef(key, paths, meta))
    return ReadResult(refs, bad)


__all__ = ["WEATHERS", "list_acdc", "load_sample"]
