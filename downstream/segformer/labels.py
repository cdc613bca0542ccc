"""Cityscapes label encodings for training: labelIds -> trainIds, and back for the official evaluator.

Cityscapes and our shards store *labelIds* (0..33); networks train on the 19 *trainIds*
(0..18, 255 = ignore). The look-up tables come from cityscapesscripts so they match the official
benchmark exactly. A map that claims to be labelIds but holds trainIds is the most common silent
data bug (training "works" but on shifted classes), so `labelids_to_trainids` refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from factory.data.sample import DataError

IGNORE_INDEX = 255
NUM_CLASSES = 19
MAX_LABEL_ID = max(lab.id for lab in _CS_LABELS)  # 33

# The 19 evaluated classes, in trainId order.
CLASSES: tuple[str, ...] = tuple(
    lab.name for lab in sorted(_CS_LABELS, key=lambda x: x.trainId) if 0 <= lab.trainId < NUM_CLASSES
)
PALETTE: list[list[int]] = [
    list(lab.color) for lab in sorted(_CS_LABELS, key=lambda x: x.trainId) if 0 <= lab.trainId < NUM_CLASSES
]


def _build_luts() -> tuple[np.ndarray, np.ndarray]:
    to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_label = np.zeros(256, dtype=np.uint8)  # trainId 255 -> labelId 0 ("unlabeled")
    for lab in _CS_LABELS:
        if 0 <= lab.id <= 255:
            tid = lab.trainId
            to_train[lab.id] = tid if 0 <= tid < NUM_CLASSES else IGNORE_INDEX
        if 0 <= lab.trainId < NUM_CLASSES and lab.id >= 0:
            to_label[lab.trainId] = lab.id
    return to_train, to_label


LABELID_TO_TRAINID, TRAINID_TO_LABELID = _build_luts()


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
