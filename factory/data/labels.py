"""Cityscapes label definitions as lookup tables, built from cityscapesscripts (never re-typed).

Three encodings meet in this project: labelIds (0..33, the ``*_labelIds.png`` files), trainIds
(0..18 plus 255 = ignore, what segmenters predict and ACDC's ``*_labelTrainIds.png`` hold) and
colours. Everything here is derived from ``cityscapesscripts.helpers.labels.labels`` so that the
factory, the evaluators and the official scripts can never disagree.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
MAX_LABEL_ID = max(lab.id for lab in _CS_LABELS)  # 33

# Names of the 19 evaluated classes in trainId order ("road", "sidewalk", ..., "bicycle").
CLASS_NAMES: tuple[str, ...] = tuple(
    lab.name
    for lab in sorted(
        (lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX and not lab.ignoreInEval),
        key=lambda lab: lab.trainId,
    )
)
NUM_CLASSES = len(CLASS_NAMES)  # 19


def _build_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    id_to_train = np.full(256, IGNORE_INDEX, np.uint8)
    id_colour = np.zeros((256, 3), np.uint8)
    train_to_id = np.zeros(256, np.uint8)
    train_colour = np.zeros((256, 3), np.uint8)
    for lab in _CS_LABELS:
        if lab.id < 0:  # license plate (-1): never drawn in label images
            continue
        id_colour[lab.id] = lab.color
        if 0 <= lab.trainId < IGNORE_INDEX:
            id_to_train[lab.id] = lab.trainId
    for lab in _CS_LABELS:  # first label with a trainId wins (e.g. car, not license plate)
        if 0 <= lab.trainId < IGNORE_INDEX and lab.id >= 0 and not lab.ignoreInEval:
            train_to_id[lab.trainId] = lab.id
            train_colour[lab.trainId] = lab.color
    for t in (id_to_train, id_colour, train_to_id, train_colour):
        t.setflags(write=False)
    return id_to_train, id_colour, train_to_id, train_colour


# uint8[256] id -> trainId (255 for void ids and unknown values); uint8[256, 3] id -> RGB;
# uint8[256] trainId -> id; uint8[256, 3] trainId -> RGB (255 -> black).
ID_TO_TRAINID, ID_COLOURS, TRAINID_TO_ID, TRAINID_COLOURS = _build_tables()

# Label ids of the classes that have instances (person, rider, car, ...): instanceIds encode
# those pixels as id * 1000 + k.
INSTANCE_IDS: tuple[int, ...] = tuple(lab.id for lab in _CS_LABELS if lab.hasInstances and lab.id >= 0)


def id_to_trainid(labelids: np.ndarray) -> np.ndarray:
    """Map a labelIds map to trainIds (uint8, 255 = ignore)."""
    return ID_TO_TRAINID[np.asarray(labelids, dtype=np.uint8)]


def trainid_to_id(trainids: np.ndarray) -> np.ndarray:
    """Map a trainIds map to labelIds (255 -> 0 'unlabeled')."""
    return TRAINID_TO_ID[np.asarray(trainids, dtype=np.uint8)]


def colorize(trainids: np.ndarray) -> np.ndarray:
    """HxW trainIds -> HxWx3 uint8 RGB in the Cityscapes palette (ignore = black)."""
    return TRAINID_COLOURS[np.asarray(trainids, dtype=np.uint8)]


def colorize_ids(labelids: np.ndarray) -> np.ndarray:
    """HxW labelIds -> HxWx3 uint8 RGB, as the official ``*_gtFine_color.png`` (without alpha)."""
    return ID_COLOURS[np.asarray(labelids, dtype=np.uint8)]


__all__ = [
    "CLASS_NAMES",
    "ID_COLOURS",
    "ID_TO_TRAINID",
    "IGNORE_INDEX",
    "INSTANCE_IDS",
    "MAX_LABEL_ID",
    "NUM_CLASSES",
    "TRAINID_COLOURS",
    "TRAINID_TO_ID",
    "colorize",
    "colorize_ids",
    "id_to_trainid",
    "trainid_to_id",
]
