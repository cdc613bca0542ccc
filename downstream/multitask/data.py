"""Training and evaluation samples for the multi-task network: image, trainIds, depth, 3D box targets.

Real references come from Cityscapes folders, synthetic ones from our shards (the reference's
own disparity, camera and gtBbox3d bytes - DESIGN.md); both are listed as ``SampleRef`` and
decoded by the factory's validating reader (``load_sample``), so a corrupt file, a size mismatch
or a trainIds map posing as labelIds fails the same way everywhere, naming the file.

Every sample is brought to one network input size. The image is resized (area for shrinking,
bilinear for enlarging; a synthetic image smaller than its labels is resized like any other);
labels are resized with nearest neighbour - class ids and metric depths must never be blended.
Depth is computed from the disparity at the label resolution (metres do not change with the
resize); the 3D boxes stay in metres and only their projection uses the scaled camera.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from downstream.shard_manifest import check_shard_keys
from factory.data.cityscapes import disparity_to_depth, list_cityscapes, load_sample
from factory.data.decode import read_png
from factory.data.labels import id_to_trainid
from factory.data.members import AGREE_KIND, AGREE_MEMBER
from factory.data.sample import DataError, SampleRef
from factory.data.shards import list_shards, shard_paths
from factory.quality.checks import ignore_disagreements, missing_agreement

from .geometry import BoxTargets, encode_boxes

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # ImageNet RGB, as mmseg's SegFormer configs
STD = np.array([58.395, 57.12, 57.375], np.float32)
NEEDED = ("labelids", "disparity", "camera", "boxes3d")


@dataclass(frozen=True)
class TargetSpec:
    """How samples become tensors: network input size, output stride of the box head, classes."""

    size: tuple[int, int]  # (H, W) of the network input
    stride: int = 4
    box_classes: tuple[str, ...] = ("car",)
    max_objects: int = 32


def list_refs(kind: str, root: str | Path, split: str, agreement_ignore: bool = False) -> list[SampleRef]:
    """``kind`` "cityscapes" (official folders) or "shards" (our webdataset shards) -> refs that
    carry every label the multi-task network needs; a ref missing one is an error naming it.

    Shards are also held to their job's manifest, when one sits beside them: a shard with fewer
    (or other) samples than recorded is an error naming it (downstream.shard_manifest).

    ``agreement_ignore`` (shards only): the semantic pixels where the factory's judge disagreed
    with the reused label (``<key>.agree.png`` == 0) are ignored in training, as the SegFormer
    datasets' switch of the same name does; a sample without the member is an error naming it.
    """
    if agreement_ignore and kind != "shards":
        raise ValueError("agreement_ignore needs kind 'shards' (the agreement map is a shard member)")
    if kind == "cityscapes":
        refs = list_cityscapes(root, split).refs
    elif kind == "shards":
        refs = list_shards(root, split).refs
        for shard in shard_paths(root, split):
            check_shard_keys(shard, [r.key for r in refs if r.meta["shard"] == str(shard)])
    else:
        raise ValueError(f"unknown sample source kind {kind!r}: use 'cityscapes' or 'shards'")
    for ref in refs:
        require_labels(ref)
        if agreement_ignore and AGREE_KIND not in ref.paths:
            raise missing_agreement(f"{ref.meta['shard']}:{ref.key}.{AGREE_MEMBER}")
    return [replace(r, meta={**r.meta, "agreement_ignore": True}) for r in refs] if agreement_ignore else refs


def require_labels(ref: SampleRef) -> None:
    """DataError naming the sample (and its shard) when a label the network trains on is absent."""
    missing = [k for k in NEEDED if k not in ref.paths]
    if missing:
        where = ref.meta.get("shard", ref.paths["image"])
        raise DataError(
            where,
            f"sample {ref.key!r} has no {missing} (the multi-task network trains semantics, depth "
            "and 3D boxes)",
            "use Cityscapes folders with gtFine, disparity, camera and gtBbox3d, or shards generated "
            "from such references",
        )


def normalise(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float, ImageNet-normalised."""
    return torch.from_numpy(((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] > h
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return arr if arr.shape[:2] == (h, w) else cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST)


@dataclass
class Prepared:
    """One sample as the network consumes it, plus what evaluation needs at label resolution."""

    key: str
    image: torch.Tensor  # 3xHxW normalised
    trainids: torch.Tensor  # HxW int64 (255 = ignore)
    depth: torch.Tensor  # HxW float32 metres, 0 = invalid
    boxes: BoxTargets
    boxes3d: dict[str, Any]  # the parsed gtBbox3d json (its sensor decodes predictions)
    label_trainids: np.ndarray  # at label resolution, for evaluation
    label_depth: np.ndarray
    label_image: np.ndarray  # uint8 RGB at label resolution, for pictures


def prepare(ref: SampleRef, spec: TargetSpec, flip: bool = False) -> Prepared:
    """Load, validate and convert one sample (raises DataError naming the file on bad input).

    ``flip`` mirrors the network's inputs and targets left-right (training augmentation); the
    label-resolution fields used by evaluation are never flipped.
    """
    require_labels(ref)
    sample = load_sample(ref)
    assert sample.semantic is not None and sample.disparity is not None  # load_sample read them
    assert sample.camera is not None and sample.boxes3d is not None
    if "sensor" not in sample.boxes3d:
        raise DataError(
            ref.paths["boxes3d"],
            "gtBbox3d json has no 'sensor' (camera of the boxes)",
            "use Cityscapes 3D gtBbox3d files (cityscapesScripts format)",
        )
    trainids = id_to_trainid(sample.semantic)
    depth = disparity_to_depth(sample.disparity, sample.camera)
    image = resize_image(sample.image, spec.size)
    taught = trainids
    if ref.meta.get("agreement_ignore"):
        # the judge disagreed with the reused label here: ignore, do not teach (list_refs)
        agree = read_png(ref.paths[AGREE_KIND], expect="gray8")
        taught = ignore_disagreements(trainids, agree, ref.paths[AGREE_KIND])
    net_trainids = resize_labels(taught, spec.size)
    net_depth = resize_labels(depth, spec.size)
    if flip:
        image, net_trainids, net_depth = (
            np.ascontiguousarray(a[:, ::-1]) for a in (image, net_trainids, net_depth)
        )
    boxes = encode_boxes(sample.boxes3d, spec.size, spec.stride, spec.box_classes, spec.max_objects, flip)
    return Prepared(
        key=ref.key,
        image=normalise(image),
        trainids=torch.from_numpy(net_trainids.astype(np.int64)),
        depth=torch.from_numpy(net_depth),
        boxes=boxes,
        boxes3d=sample.boxes3d,
        label_trainids=trainids,
        label_depth=depth,
        label_image=resize_image(sample.image, sample.label_size),
    )


class MultitaskDataset(torch.utils.data.Dataset):
    """Refs -> training dicts. A bad sample yields ``{"bad": (key, reason)}`` instead of raising,
    so a long run records it and goes on (``collate`` separates them).

    Index ``i`` in ``[0, n)`` is sample ``i``; ``n + i`` is the same sample mirrored left-right
    (so a precomputed schedule fixes the augmentation too, and a resumed run repeats it).

    ``cache=True`` keeps every prepared sample in memory (each loader worker its own copy): at
    64x128 decoding and validating a sample costs about a third of a tiny model's CPU step, and
    480 samples take ~100 MB. Leave it off for full-resolution Cityscapes.
    """

    def __init__(self, refs: list[SampleRef], spec: TargetSpec, cache: bool = False):
        self.refs = refs
        self.spec = spec
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return 2 * len(self.refs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is None:
            return self._load(i)
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def _load(self, i: int) -> dict[str, Any]:
        n = len(self.refs)
        ref = self.refs[i % n]
        try:
            p = prepare(ref, self.spec, flip=i >= n)
        except DataError as e:
            return {"bad": (ref.key, str(e))}
        return {
            "image": p.image,
            "trainids": p.trainids,
            "depth": p.depth,
            "heatmap": torch.from_numpy(p.boxes.heatmap),
            "box_index": torch.from_numpy(p.boxes.index),
            "box_reg": torch.from_numpy(p.boxes.reg),
            "box_mask": torch.from_numpy(p.boxes.mask),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; list the bad ones under "bad" (the trainer logs and skips them)."""
    good = [it for it in items if "bad" not in it]
    batch: dict[str, Any] = {"bad": [it["bad"] for it in items if "bad" in it]}
    if good:
        batch.update({k: torch.stack([it[k] for it in good]) for k in good[0]})
    return batch
