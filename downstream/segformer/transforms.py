"""Loading transforms shared by all our datasets (files or shard members, labelIds or trainIds).

``LoadLumenImage`` reads the image (BGR, mmseg's convention) and, when its labels are larger
(a synthetic image generated at 512x1024 for 1024x2048 labels), resizes the *image* to the
labels - never the labels to the image, which would blur class boundaries and instance ids.
``LoadLumenLabels`` converts labelIds to trainIds with cityscapesscripts' table and refuses a
map whose declared encoding is wrong.
"""

from __future__ import annotations

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from factory.data.members import AGREE_MEMBER
from factory.data.sample import DataError
from factory.quality.checks import ignore_disagreements

from .labels import check_trainids, labelids_to_trainids
from .shards import LABELIDS_MEMBER, ShardMember, decode_image, decode_label, open_png, read_member


def _member(results: dict, suffix: str) -> ShardMember:
    shard, offset, size = results["shard_files"][suffix]
    return ShardMember(shard, offset, size)


def _label_size(results: dict) -> tuple[int, int] | None:
    """(h, w) of the label map, read from the PNG header only; None without labels."""
    if "shard_files" in results:
        data = read_member(_member(results, LABELIDS_MEMBER))
        w, h = open_png(data, results["seg_map_path"], load=False).size
        return h, w
    path = results.get("seg_map_path")
    if not path:
        return None
    with open_png(path, path, load=False) as im:
        w, h = im.size
    return h, w


@TRANSFORMS.register_module()
class LoadLumenImage(BaseTransform):
    """Read the image of a file- or shard-backed sample; resize it to its label size if needed."""

    def __init__(self, resize_to_labels: bool = True, interpolation: int = cv2.INTER_LINEAR) -> None:
        self.resize_to_labels = resize_to_labels
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        if "shard_files" in results:
            img = decode_image(read_member(_member(results, results["image_suffix"])), results["img_path"])
        else:
            read = cv2.imread(results["img_path"], cv2.IMREAD_COLOR)
            if read is None:
                raise DataError(
                    results["img_path"], "image does not exist or does not decode", "restore the file"
                )
            img = read
        if self.resize_to_labels:
            size = _label_size(results)
            if size is not None and size != img.shape[:2]:
                lh, lw = size
                ih, iw = img.shape[:2]
                if abs(lh / ih - lw / iw) > 0.02 * max(lh / ih, lw / iw):
                    raise DataError(
                        results["img_path"],
                        f"image {ih}x{iw} and labels {lh}x{lw} have different aspect ratios",
                        "the image must be a scaled copy of the labelled frame",
                    )
                img = cv2.resize(img, (lw, lh), interpolation=self.interpolation)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class LoadLumenLabels(BaseTransform):
    """Read the semantic labels as trainIds (0..18, 255 = ignore) into ``gt_seg_map``."""

    def transform(self, results: dict) -> dict:
        where = results["seg_map_path"]
        if "shard_files" in results:
            labels = decode_label(read_member(_member(results, LABELIDS_MEMBER)), where)
        else:
            with open_png(where, where) as im:
                if im.mode not in ("L", "P"):
                    raise DataError(
                        where,
                        f"label PNG has mode {im.mode!r}, expected 8-bit single channel",
                        "use the official *_labelIds.png / *_labelTrainIds.png files",
                    )
                labels = np.asarray(im, dtype=np.uint8)
        encoding = results.get("label_encoding", "labelIds")
        if encoding == "labelIds":
            labels = labelids_to_trainids(labels, where)
        elif encoding == "trainIds":
            check_trainids(labels, where)
        else:
            raise ValueError(f"label_encoding {encoding!r} must be 'labelIds' or 'trainIds'")
        if results.get("agreement_ignore"):
            # the judge disagreed with the reused label here: ignore, do not teach (datasets.py)
            agree = decode_label(read_member(_member(results, AGREE_MEMBER)), where)
            labels = ignore_disagreements(labels, agree, where)
        results["gt_seg_map"] = np.ascontiguousarray(labels)
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results
