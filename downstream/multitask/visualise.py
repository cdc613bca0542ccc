"""A picture of what the multi-task network predicts: image with 3D boxes | semantics | depth.

One row per val image. The 3D boxes are drawn as wireframes projected with cityscapesscripts'
``Box3dImageTransform`` (the evaluator's own projection): ground truth in white, predictions in
green with their score. Semantics in the Cityscapes palette, depth as inverse depth (near =
bright), the ground truth's below the prediction's in the same colour scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cityscapesscripts.helpers.box3dImageTransform import CRS_S, CRS_V, Box3dImageTransform

from factory.data.labels import colorize
from factory.viz import save_grid

from .geometry import SensorView

# Box3dImageTransform.loc order: BLB BRB FRB FLB (bottom ring) then BLT BRT FRT FLT (top ring)
EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


# boxes: ground truth white, predictions green
COLUMNS = ("3D boxes (white GT, green pred)", "semantics (pred)", "depth (pred)", "depth (GT)")


def draw_boxes(
    image: np.ndarray,
    objects: list[dict[str, Any]],
    view: SensorView,
    colour: tuple[int, int, int],
    scale: float,
) -> None:
    """Draw the wireframes of ``objects`` (Cityscapes 3D json) on ``image`` (json grid x scale)."""
    box = Box3dImageTransform(view.camera())
    for obj in objects:
        b3 = obj["3d"]
        box.initialize_box(b3["dimensions"], b3["rotation"], b3["center"], coordinate_system=CRS_V)
        if min(v[2] for v in box.get_vertices(CRS_S).values()) < 0.5:
            continue  # partly behind the camera: the projection would wrap around
        pts = [tuple(int(round(c * scale)) for c in p) for p in box.get_vertices_2d().values()]
        for a, b in EDGES:
            cv2.line(image, pts[a], pts[b], colour, 1, cv2.LINE_AA)
        if "score" in obj and colour != (255, 255, 255):
            x, y = pts[4]
            cv2.putText(
                image, f"{obj['score']:.2f}", (x, max(8, y - 2)), cv2.FONT_HERSHEY_PLAIN, 0.7, colour, 1
            )


def inverse_depth_rgb(depth: np.ndarray, near: float = 2.0) -> np.ndarray:
    """Depth in metres -> RGB (magma of near/depth; invalid = black)."""
    inv = np.where(depth > 0, np.clip(near / np.maximum(depth, 1e-3), 0, 1), 0)
    rgb = cv2.applyColorMap((inv * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[:, :, ::-1]
    rgb[depth <= 0] = 0
    return rgb


def prediction_row(
    image: np.ndarray,
    seg_pred: np.ndarray,
    depth_pred: np.ndarray,
    depth_gt: np.ndarray,
    gt_objects: list[dict[str, Any]],
    pred_objects: list[dict[str, Any]],
    view: SensorView,
    width: int = 384,
) -> list[np.ndarray]:
    """Tiles of one row, all ``width`` wide: boxes on image, semantics, depth prediction / truth."""
    h, w = image.shape[:2]
    scale = width / w
    size = (width, int(round(h * scale)))

    def up(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)

    canvas = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    draw_boxes(canvas, gt_objects, view, (255, 255, 255), scale)
    draw_boxes(canvas, pred_objects, view, (0, 255, 0), scale)
    return [
        canvas,
        up(colorize(seg_pred)),
        up(inverse_depth_rgb(depth_pred)),
        up(inverse_depth_rgb(depth_gt)),
    ]


def save_sheet(rows: list[list[np.ndarray]], path: Path) -> Path:
    """Rows of tiles -> one PNG (columns: boxes | semantics | depth predicted | depth truth)."""
    return save_grid(rows, path, col_labels=COLUMNS, pad=2, margin=0)
