"""3D vehicle boxes <-> dense CenterNet-style targets, in the Cityscapes 3D conventions.

Cityscapes 3D (gtBbox3d/*.json, and the boxes our shards copy byte for byte) gives each box in
the vehicle frame V of ISO 8855 (x forward, y left, z up): centre, (length, width, height) and a
rotation quaternion (w, x, y, z); ``sensor`` holds the camera (fx, fy, u0, v0 at imgWidth x
imgHeight) and ``sensor_T_ISO_8855`` (3x4, V -> camera frame C, same axes as V). The image-
aligned frame S (x right, y down, z forward) is C with its axes permuted; cityscapesscripts'
``Box3dImageTransform`` implements these conversions and is what the official evaluator uses,
so decoding goes through it (and is checked against the evaluator in the tests).

Encoding (one object -> one heatmap peak + one regression vector at output stride ``s``):
the box centre is projected into the network input; the peak sits at its cell, and the vector
holds the sub-cell offset (2), log depth of the centre along the optical axis (1), log
dimensions (3) and the observation angle alpha = yaw - azimuth of the centre ray as sin/cos (2).
The network sees the observation angle, not the yaw: a car's appearance depends on the angle
it is seen under, the same yaw looks different left and right of the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from cityscapesscripts.helpers.box3dImageTransform import (
    CRS_V,
    Box3dImageTransform,
    Camera,
    get_K_multiplier,
)

# (offset u, offset v, log depth, log length, log width, log height, sin alpha, cos alpha)
REG_DIMS = 8
# S = K_MULT @ C: camera frame with V's axes -> image-aligned axes
K_MULT = get_K_multiplier()


@dataclass(frozen=True)
class SensorView:
    """The camera of one sample as the network sees it: the json's sensor scaled to the input.

    ``sx``/``sy`` map the json's pixel grid (imgWidth x imgHeight) to the network input's.
    """

    fx: float
    fy: float
    u0: float
    v0: float
    sensor_T: np.ndarray  # 3x4, V -> C
    img_size: tuple[int, int]  # (H, W) of the json's pixel grid
    sx: float = 1.0
    sy: float = 1.0

    @classmethod
    def from_boxes3d(cls, boxes3d: dict[str, Any], input_size: tuple[int, int] | None = None) -> SensorView:
        s = boxes3d["sensor"]
        h, w = int(boxes3d["imgHeight"]), int(boxes3d["imgWidth"])
        ih, iw = input_size if input_size is not None else (h, w)
        return cls(
            float(s["fx"]),
            float(s["fy"]),
            float(s["u0"]),
            float(s["v0"]),
            np.asarray(s["sensor_T_ISO_8855"], dtype=np.float64),
            (h, w),
            iw / w,
            ih / h,
        )

    def camera(self) -> Camera:
        """cityscapesscripts' Camera on the json's pixel grid (what the evaluator builds)."""
        return Camera(
            self.fx, self.fy, self.u0, self.v0, self.sensor_T.tolist(), self.img_size[1], self.img_size[0]
        )

    def v_to_s(self, p_v: np.ndarray) -> np.ndarray:
        return K_MULT @ (self.sensor_T[:, :3] @ p_v + self.sensor_T[:, 3])

    def s_to_v(self, p_s: np.ndarray) -> np.ndarray:
        p_c = K_MULT.T @ p_s
        return np.linalg.solve(self.sensor_T[:, :3], p_c - self.sensor_T[:, 3])

    def project(self, p_s: np.ndarray) -> tuple[float, float]:
        """S-frame point -> (u, v) in network-input pixels."""
        u = self.fx * p_s[0] / p_s[2] + self.u0
        v = self.fy * p_s[1] / p_s[2] + self.v0
        return u * self.sx, v * self.sy

    def unproject(self, u: float, v: float, depth: float) -> np.ndarray:
        """(u, v) in network-input pixels and depth along the optical axis -> S-frame point."""
        uj, vj = u / self.sx, v / self.sy
        return np.array([(uj - self.u0) * depth / self.fx, (vj - self.v0) * depth / self.fy, depth])


def yaw_of(quaternion: list[float]) -> float:
    """Rotation about V's z axis of a (w, x, y, z) quaternion."""
    w, x, y, z = (float(q) for q in quaternion)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def ray_azimuth(view: SensorView, centre_s: np.ndarray) -> float:
    """Azimuth of the ray from the camera to a point, in V's x-y plane (0 = straight ahead)."""
    p_c = K_MULT.T @ centre_s
    d_v = np.linalg.solve(view.sensor_T[:, :3], p_c)  # direction only: no translation
    return math.atan2(d_v[1], d_v[0])


def wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass
class BoxTargets:
    """Dense targets of one image: class heatmaps at stride ``s`` and up to K regressed objects."""

    heatmap: np.ndarray  # (C, h, w) float32, peaks 1 at object centres
    index: np.ndarray  # (K,) int64 flat cell index y*w + x
    reg: np.ndarray  # (K, REG_DIMS) float32
    mask: np.ndarray  # (K,) float32, 1 for real objects
    skipped: int = 0  # objects whose centre falls outside the image or behind the camera


def _draw_gaussian(hm: np.ndarray, cx: int, cy: int, sigma: float) -> None:
    h, w = hm.shape
    r = max(1, int(math.ceil(3 * sigma)))
    y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma * sigma))
    np.maximum(hm[y0:y1, x0:x1], g, out=hm[y0:y1, x0:x1])


def encode_boxes(
    boxes3d: dict[str, Any],
    input_size: tuple[int, int],
    stride: int,
    classes: tuple[str, ...],
    max_objects: int,
    flip: bool = False,
) -> BoxTargets:
    """gtBbox3d json -> BoxTargets for a network input of ``input_size`` (H, W).

    ``flip``: targets for the horizontally mirrored input - centre column u -> W - u and
    observation angle alpha -> -alpha (the mirrored scene seen by the mirrored camera); depth and
    dimensions do not change. As usual for this augmentation, the principal point's offset from
    the image centre (Cityscapes: 3.5% of the width) is not mirrored.
    """
    view = SensorView.from_boxes3d(boxes3d, input_size)
    h, w = input_size[0] // stride, input_size[1] // stride
    heatmap = np.zeros((len(classes), h, w), np.float32)
    index = np.zeros(max_objects, np.int64)
    reg = np.zeros((max_objects, REG_DIMS), np.float32)
    mask = np.zeros(max_objects, np.float32)
    k = skipped = 0
    for obj in boxes3d["objects"]:
        if obj["label"] not in classes:
            continue
        b3 = obj["3d"]
        centre_s = view.v_to_s(np.asarray(b3["center"], np.float64))
        if centre_s[2] <= 0.5:
            skipped += 1
            continue
        u, v = view.project(centre_s)
        if flip:
            u = input_size[1] - u
        cu, cv = u / stride, v / stride
        cx, cy = int(math.floor(cu)), int(math.floor(cv))
        if not (0 <= cx < w and 0 <= cy < h) or k >= max_objects:
            skipped += 1
            continue
        # peak spread from the 2D box: about a sixth of its size, at least one cell
        ax, ay, aw, ah = (float(a) for a in obj["2d"]["amodal"])
        sigma = max(0.8, max(aw * view.sx, ah * view.sy) / stride / 6.0)
        _draw_gaussian(heatmap[classes.index(obj["label"])], cx, cy, sigma)
        alpha = wrap(yaw_of(b3["rotation"]) - ray_azimuth(view, centre_s))
        if flip:
            alpha = -alpha
        length, width, height = (max(float(d), 1e-3) for d in b3["dimensions"])
        reg[k] = [
            cu - cx,
            cv - cy,
            math.log(centre_s[2]),
            math.log(length),
            math.log(width),
            math.log(height),
            math.sin(alpha),
            math.cos(alpha),
        ]
        index[k] = cy * w + cx
        mask[k] = 1.0
        k += 1
    return BoxTargets(heatmap, index, reg, mask, skipped)


def decode_object(
    view: SensorView, cls: str, score: float, cell: tuple[int, int], reg: np.ndarray, stride: int
) -> dict[str, Any]:
    """One heatmap peak (cell = (x, y)) and its regression vector -> a Cityscapes 3D object json."""
    u = (cell[0] + float(reg[0])) * stride
    v = (cell[1] + float(reg[1])) * stride
    depth = math.exp(float(reg[2]))
    centre_s = view.unproject(u, v, depth)
    centre_v = view.s_to_v(centre_s)
    alpha = math.atan2(float(reg[6]), float(reg[7]))
    yaw = wrap(alpha + ray_azimuth(view, centre_s))
    rotation = [math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)]
    dims = [math.exp(float(x)) for x in reg[3:6]]
    box = Box3dImageTransform(view.camera())
    box.initialize_box(dims, rotation, centre_v.tolist(), coordinate_system=CRS_V)
    x0, y0, x1, y1 = box.get_amodal_box_2d()
    return {
        "2d": {"amodal": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]},
        "3d": {"center": [float(c) for c in centre_v], "dimensions": dims, "rotation": rotation},
        "label": cls,
        "score": float(score),
    }


def decode_boxes(
    heatmap: np.ndarray,
    reg: np.ndarray,
    view: SensorView,
    classes: tuple[str, ...],
    stride: int,
    *,
    top_k: int = 50,
    min_score: float = 0.05,
) -> list[dict[str, Any]]:
    """Per-image network outputs -> Cityscapes 3D prediction objects.

    heatmap: (C, h, w) scores in [0, 1] after sigmoid; reg: (REG_DIMS, h, w). A peak is a cell
    that is the maximum of its 3x3 neighbourhood (CenterNet's NMS), kept when its score is at
    least ``min_score``; at most ``top_k`` per image, best first.
    """
    c, h, w = heatmap.shape
    padded = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    neighbourhood = np.max(
        [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0
    )
    peaks = (heatmap >= neighbourhood) & (heatmap >= min_score)
    ci, yi, xi = np.nonzero(peaks)
    order = np.argsort(-heatmap[ci, yi, xi], kind="stable")[:top_k]
    return [
        decode_object(
            view, classes[ci[j]], heatmap[ci[j], yi[j], xi[j]], (xi[j], yi[j]), reg[:, yi[j], xi[j]], stride
        )
        for j in order
    ]


def perfect_outputs(targets: BoxTargets) -> tuple[np.ndarray, np.ndarray]:
    """The outputs a perfect network would give for ``targets`` (heatmap, dense regression map):
    decode(perfect_outputs(encode(gt))) must give back the ground-truth boxes (the tests' check
    of the encoding against cityscapesscripts' own geometry and evaluator)."""
    _, h, w = targets.heatmap.shape
    dense = np.zeros((REG_DIMS, h * w), np.float32)
    for k in np.nonzero(targets.mask)[0]:
        dense[:, targets.index[k]] = targets.reg[k]
    return targets.heatmap.copy(), dense.reshape(REG_DIMS, h, w)
