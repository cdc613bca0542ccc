"""Cityscapes label encodings for training: labelIds -> trainIds, and back for the official evaluator.

Cityscapes and our shards store *labelIds* (0..33); networks train on the 19 *trainIds*
(0..18, 255 = ignore). The look-up tables come from cityscapesscripts so they match the official
benchmark exactly. A map that claims to be labelIds but holds trainIds is the most common silent
data bug (training "works" but on shifted classes), so `labelids_to_trainids` refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from factory.data.labels import (
    CLASS_NAMES,
    ID_TO_TRAINID,
    IGNORE_INDEX,
    MAX_LABEL_ID,
    NUM_CLASSES,
    TRAINID_COLOURS,
    TRAINID_TO_ID,
)
from factory.data.sample import DataError

# mmseg's dataset metainfo: the 19 evaluated classes in trainId order and their colours. The
# tables themselves live in factory.data.labels (built from cityscapesscripts), shared with the factory.
CLASSES: tuple[str, ...] = CLASS_NAMES
PALETTE: list[list[int]] = [[int(c) for c in TRAINID_COLOURS[t]] for t in range(NUM_CLASSES)]
LABELID_TO_TRAINID = ID_TO_TRAINID
TRAINID_TO_LABELID = TRAINID_TO_ID


def check_labelids(labels: np.ndarray, path: str | Path) -> None:
    """Refuse a map declared as labelIds that is not one (most often: it holds trainIds).

    Two signs, both implausible for a full-frame labelIds map: a value above 33 (trainIds use
    255 for ignore), or several classes that all lie in 0..18. A street scene's labelIds always
    include some id >= 19 (traffic light/sign 19/20, vegetation 21, sky 23, person 24, car 26),
    while a trainIds map never does.
    """
    values = np.unique(labels)
    fix = "store the *_gtFine_labelIds.png bytes in '<key>.labelids.png', or declare the map as trainIds"
    if values.size and int(values.max()) > MAX_LABEL_ID:
        bad = [int(v) for v in values if v > MAX_LABEL_ID][:5]
        raise DataError(
            path,
            f"declared as Cityscapes labelIds but holds values {bad} above {MAX_LABEL_ID}: "
            "this looks like a labelTrainIds map (255 = ignore)",
            fix,
        )
    if values.size >= 3 and int(values.max()) < NUM_CLASSES:
        raise DataError(
            path,
            f"declared as Cityscapes labelIds but all its classes {values.tolist()} are in 0..18 "
            "(no sky, vegetation, car, sign...): this looks like a labelTrainIds map",
            fix,
        )


def labelids_to_trainids(labels: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Map a uint8 labelIds map to trainIds (255 = ignore), after checking it is labelIds."""
    check_labelids(labels, path)
    return LABELID_TO_TRAINID[labels]


def check_trainids(labels: np.ndarray, path: str | Path) -> None:
    """A trainIds map holds only 0..18 and 255."""
    values = np.unique(labels)
    bad = [int(v) for v in values if NUM_CLASSES <= v < IGNORE_INDEX]
    if bad:
        raise DataError(
            path,
            f"declared as labelTrainIds but holds values {bad[:5]} outside 0..18/255 (labelIds?)",
            "point the dataset at the *_labelTrainIds.png files, or declare the map as labelIds",
        )


def trainids_to_labelids(pred: np.ndarray) -> np.ndarray:
    """Predictions (trainIds) to labelIds, the format cityscapesscripts' evaluator reads."""
    return TRAINID_TO_LABELID[pred.astype(np.uint8)]
