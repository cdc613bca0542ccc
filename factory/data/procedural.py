"""The procedural city: seeded street scenes written in the official Cityscapes and ACDC layouts.

No dataset can be downloaded on the project's machines, so every reader, job and benchmark is
tested on scenes generated here. A scene is a small 3D world (a straight street with a pinhole
camera 1.22 m above the road, as in Cityscapes) made of planar polygons: sky, a far skyline,
building facades, road, sidewalks, terrain, trees, poles, signs, traffic lights, cars and people.
Every polygon is rasterised with PIL in painter's order (far to near), exactly as
cityscapesscripts' ``json2labelImg`` rasterises ``gtFine_polygons.json``; so the polygons file,
the labelIds map and the instance map agree pixel for pixel. Each polygon carries its 3D plane, so
the per-pixel depth (and from it the Cityscapes disparity) is exact up to the 1/256 px encoding.

Weather (``apply_weather``) is rendered from the clear image and its depth: fog by Koschmieder's
law, night as a dark exposure with emissive lamps, windows and car lights, rain as streaks over a
dark wet road with reflections, snow as white cover on horizontal surfaces plus flakes. The
shift is large enough that a segmenter trained on clear scenes degrades on these images.

Usage::

    python -m factory.data.procedural --out data/procedural --n-train 200 --n-val 50 --n-acdc 25   (make city)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from factory.cli import run_cli
from factory.data.labels import ID_COLOURS, ID_TO_TRAINID

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# ACDC's four adverse weathers (factory.data.acdc.WEATHERS); apply_weather also renders "clear"
WEATHERS = ("fog", "night", "rain", "snow")
ALL_WEATHERS = ("clear", *WEATHERS)

# Cityscapes label ids used by the generator (cityscapesscripts.helpers.labels).
EGO, ROAD, SIDEWALK, BUILDING, POLE, LIGHT, SIGN = 1, 7, 8, 11, 17, 19, 20
VEGETATION, TERRAIN, SKY, PERSON, CAR = 21, 22, 23, 24, 26
LABEL_NAMES = {
    EGO: "ego vehicle",
    ROAD: "road",
    SIDEWALK: "sidewalk",
    BUILDING: "building",
    POLE: "pole",
    LIGHT: "traffic light",
    SIGN: "traffic sign",
    VEGETATION: "vegetation",
    TERRAIN: "terrain",
    SKY: "sky",
    PERSON: "person",
    CAR: "car",
}
HAS_INSTANCES = (PERSON, CAR)

SKY_DEPTH = 1000.0  # metres given to sky pixels (disparity 0 = invalid there)
CAM_HEIGHT = 1.22  # camera height above the road (Cityscapes extrinsic z)
BASELINE = 0.209313  # Cityscapes stereo baseline (m)
# Cityscapes intrinsics at 2048x1024, scaled to the requested resolution.
_FX, _FY, _U0, _V0 = 2262.52, 2265.3017905988554, 1096.98, 513.137
# Camera position in the vehicle frame (ISO 8855: x forward, y left, z up).
_CAM_X, _CAM_Y = 1.7, 0.1

DEFAULT_CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}


# ---------------------------------------------------------------------------------------------
# Camera
# ---------------------------------------------------------------------------------------------


def make_camera(height: int, width: int) -> dict[str, Any]:
    """Cityscapes ``camera.json`` content for a pinhole camera scaled to ``height`` x ``width``.

    The camera looks straight down the street (pitch, yaw and roll 0) so that the image rows and
    the road plane relate by ``Z = fy * h / (v - v0)``.
    """
    sx, sy = width / 2048.0, height / 1024.0
    return {
        "extrinsic": {
            "baseline": BASELINE,
            "pitch": 0.0,
            "roll": 0.0,
            "x": _CAM_X,
            "y": _CAM_Y,
            "yaw": 0.0,
            "z": CAM_HEIGHT,
        },
        "intrinsic": {"fx": _FX * sx, "fy": _FY * sy, "u0": _U0 * sx, "v0": _V0 * sy},
    }


def depth_to_disparity(depth: np.ndarray, camera: dict[str, Any]) -> np.ndarray:
    """Metres -> Cityscapes 16-bit disparity ``p = d * 256 + 1`` (0 = invalid).

    Pixels whose disparity rounds below 1/256 px (sky, the far horizon) are invalid, as in the
    real data where the stereo matcher gives no value.
    """
    d = camera["extrinsic"]["baseline"] * camera["intrinsic"]["fx"] / np.maximum(depth, 1e-6)
    p = np.round(d * 256.0) + 1.0
    p[(depth >= SKY_DEPTH) | (p < 2)] = 0
    return np.clip(p, 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Scene record and geometry helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """One rendered street scene (clear weather) with every label the factory reuses.

    image: HxWx3 uint8 RGB. labelids: HxW uint8 Cityscapes label ids. instanceids: HxW int32
    (id*1000+k for cars and persons, else the label id). depth: HxW float32 metres (sky =
    SKY_DEPTH). disparity: HxW uint16 Cityscapes encoding. camera / boxes3d / polygons: the
    ``camera.json``, ``gtBbox3d.json`` and ``gtFine_polygons.json`` contents. ground: HxW bool,
    the horizontal surfaces (road, sidewalk, terrain). emissive: HxW float32 in [0, 1], pixels
    that emit light at night (lamps, lit windows, car and traffic lights). lamps: (u, v) image
    positions of street lamps, which light the ground around them at night.
    """

    image: np.ndarray
    labelids: np.ndarray
    instanceids: np.ndarray
    depth: np.ndarray
    disparity: np.ndarray
    camera: dict[str, Any]
    boxes3d: dict[str, Any]
    polygons: dict[str, Any]
    ground: np.ndarray
    emissive: np.ndarray
    lamps: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Poly:
    """A planar polygon of the scene: label, 3D corner points (camera frame) and its plane.

    plane: ("ground", y) for Y = y, ("side", x) for X = x, ("front", z) for Z = z.
    Camera frame: X right, Y down, Z forward (metres).
    """

    label: int
    points: np.ndarray  # (N, 3)
    plane: tuple[str, float]
    colour: tuple[float, float, float]
    instance: int = -1  # index of the car/person this face belongs to
    kind: str = ""  # texture: road, sidewalk, terrain, facade, tree, car, person, plain, skyline


class _Cam:
    """Pinhole projection and per-pixel back-projection for one resolution."""

    def __init__(self, camera: dict[str, Any], height: int, width: int):
        k = camera["intrinsic"]
        self.fx, self.fy, self.u0, self.v0 = k["fx"], k["fy"], k["u0"], k["v0"]
        self.h, self.w = height, width
        self.u, self.v = np.meshgrid(
            np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64), indexing="xy"
        )

    def project(self, pts: np.ndarray) -> np.ndarray:
        z = np.maximum(pts[:, 2], 1e-3)
        return np.stack([self.fx * pts[:, 0] / z + self.u0, self.fy * pts[:, 1] / z + self.v0], axis=1)

    def plane_depth(self, plane: tuple[str, float]) -> np.ndarray:
        """Depth Z of every pixel's ray hitting the plane (inf where the ray misses it)."""
        kind, c = plane
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "front":
                return np.full((self.h, self.w), c)
            z = self.fy * c / (self.v - self.v0) if kind == "ground" else self.fx * c / (self.u - self.u0)
        z[~np.isfinite(z) | (z <= 0)] = np.inf
        return z


def _clip_polygon(pts: np.ndarray, xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a 2D polygon to a rectangle (keeps coordinates small)."""
    out = [tuple(p) for p in pts]
    for axis, bound, keep_greater in ((0, xmin, True), (0, xmax, False), (1, ymin, True), (1, ymax, False)):
        if not out:
            break
        inp, out = out, []
        for i, cur in enumerate(inp):
            prev = inp[i - 1]
            cur_in = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                out.append(cur)
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _int_outline(pts: np.ndarray, height: int, width: int) -> list[list[int]]:
    """Clip projected points to a one-pixel margin around the image, round to integer vertices."""
    pts = _clip_polygon(pts, -1.0, -1.0, width, height)
    if len(pts) < 3:
        return []
    ipts = np.round(pts).astype(int)
    keep = [0] + [i for i in range(1, len(ipts)) if (ipts[i] != ipts[i - 1]).any()]
    ipts = ipts[keep]
    return ipts.tolist() if len(ipts) >= 3 else []


def _raster(poly: Sequence[Sequence[int]], height: int, width: int) -> np.ndarray:
    """Rasterise like cityscapesscripts' json2labelImg (PIL ImageDraw.polygon fill)."""
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in poly], fill=1)
    return np.asarray(img, dtype=bool)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (a small random grid upsampled bicubically)."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    g = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return np.clip(cv2.resize(g, (width, height), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _quad_front(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)


def _quad_side(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], dtype=np.float64)


def _quad_ground(x0: float, x1: float, z0: float, z1: float, y: float = CAM_HEIGHT) -> np.ndarray:
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], dtype=np.float64)


def _jitter(
    rng: np.random.Generator, rgb: Sequence[float], amount: float = 18.0
) -> tuple[float, float, float]:
    c = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


_FACADE_COLOURS = [(150, 120, 100), (190, 180, 160), (120, 110, 105), (170, 90, 70), (200, 195, 185),
                   (105, 115, 125), (215, 190, 140), (140, 140, 150), (180, 150, 120)]  # fmt: skip
_CAR_COLOURS = [(200, 30, 30), (30, 60, 160), (230, 230, 230), (30, 30, 35), (150, 150, 155),
                (40, 110, 60), (220, 180, 40), (90, 50, 30), (180, 180, 190), (20, 90, 140)]  # fmt: skip
_CLOTHES = [(40, 40, 60), (150, 30, 40), (30, 80, 140), (200, 200, 190), (60, 90, 50), (120, 80, 40)]
_SKIN = [(230, 190, 160), (190, 140, 100), (120, 80, 55)]
_SIGN_COLOURS = [(20, 70, 180), (200, 30, 30), (235, 235, 235), (240, 200, 20)]


# ---------------------------------------------------------------------------------------------
# Scene layout (the 3D world)
# ---------------------------------------------------------------------------------------------


@dataclass
class _World:
    polys: list[_Poly]
    cars: list[dict[str, Any]]  # per car: center, dims (l, w, h), facing (+1 away / -1 towards)
    persons: int
    lamps3d: list[np.ndarray]
    lights3d: list[tuple[np.ndarray, tuple[float, float, float]]]


def _layout(rng: np.random.Generator) -> _World:
    """Sample the 3D street: road, sidewalks, buildings, vegetation, street furniture, agents."""
    h = CAM_HEIGHT
    lane_w = float(rng.uniform(2.9, 3.5))
    n_lanes = int(rng.integers(2, 5))
    cam_lane = int(rng.integers(0, n_lanes))
    xl = -(cam_lane + float(rng.uniform(0.35, 0.65))) * lane_w  # road left edge (camera frame)
    xr = xl + n_lanes * lane_w
    sw_l, sw_r = float(rng.uniform(1.5, 4.0)), float(rng.uniform(1.5, 4.0))
    tr_l = float(rng.uniform(1.0, 3.0)) if rng.random() < 0.4 else 0.0
    tr_r = float(rng.uniform(1.0, 3.0)) if rng.random() < 0.4 else 0.0
    fl, fr = xl - sw_l - tr_l, xr + sw_r + tr_r  # facade planes
    z_end = float(rng.uniform(60.0, 140.0))
    z0 = 1.0

    polys: list[_Poly] = []
    # Far skyline: a band of distant buildings across the street's end (fronto-parallel).
    sky_z = 300.0
    xs = np.sort(rng.uniform(-400, 400, size=12))
    for a, b in zip(xs[:-1], xs[1:]):
        top = -float(rng.uniform(5.0, 40.0))
        polys.append(_Poly(BUILDING, _quad_front(a, b, top, h, sky_z), ("front", sky_z),
                           _jitter(rng, (150, 155, 165), 12), kind="skyline"))  # fmt: skip
    if rng.random() < 0.5:  # a building closing the street
        top = -float(rng.uniform(8.0, 30.0))
        polys.append(_Poly(BUILDING, _quad_front(fl - 20, fr + 20, top, h, z_end), ("front", z_end),
                           _jitter(rng, _FACADE_COLOURS[int(rng.integers(len(_FACADE_COLOURS)))]),
                           kind="facade"))  # fmt: skip

    # Facades along both sides, with gaps filled by trees behind.
    facades: list[_Poly] = []
    for x in (fl, fr):
        z = z0
        while z < z_end:
            length = float(rng.uniform(8.0, 25.0))
            z1 = min(z + length, z_end)
            if rng.random() < 0.18:
                top = h - float(rng.uniform(3.0, 9.0))
                facades.append(_Poly(VEGETATION, _quad_side(x, z, z1, top, h), ("side", x),
                                     _jitter(rng, (70, 110, 40), 15), kind="tree"))  # fmt: skip
            else:
                top = h - float(rng.uniform(6.0, 28.0))
                colour = _jitter(rng, _FACADE_COLOURS[int(rng.integers(len(_FACADE_COLOURS)))])
                facades.append(
                    _Poly(BUILDING, _quad_side(x, z, z1, top, h), ("side", x), colour, kind="facade")
                )
            z = z1
    # Far faces first: order facades by their far end, farthest first.
    facades.sort(key=lambda p: -float(p.points[:, 2].max()))
    polys += facades

    # Ground: road, sidewalks, terrain strips.
    polys.append(_Poly(ROAD, _quad_ground(xl, xr, z0, z_end), ("ground", h), _jitter(rng, (88, 86, 90), 10),
                       kind="road"))  # fmt: skip
    polys.append(_Poly(SIDEWALK, _quad_ground(xl - sw_l, xl, z0, z_end), ("ground", h),
                       _jitter(rng, (160, 150, 150), 12), kind="sidewalk"))  # fmt: skip
    polys.append(_Poly(SIDEWALK, _quad_ground(xr, xr + sw_r, z0, z_end), ("ground", h),
                       _jitter(rng, (160, 150, 150), 12), kind="sidewalk"))  # fmt: skip
    if tr_l > 0:
        polys.append(_Poly(TERRAIN, _quad_ground(fl, xl - sw_l, z0, z_end), ("ground", h),
                           _jitter(rng, (110, 140, 70), 12), kind="terrain"))  # fmt: skip
    if tr_r > 0:
        polys.append(_Poly(TERRAIN, _quad_ground(xr + sw_r, fr, z0, z_end), ("ground", h),
                           _jitter(rng, (110, 140, 70), 12), kind="terrain"))  # fmt: skip

    # Objects standing on the ground; each is a list of faces, sorted later by distance.
    objects: list[tuple[float, list[_Poly]]] = []
    lamps3d: list[np.ndarray] = []
    lights3d: list[tuple[np.ndarray, tuple[float, float, float]]] = []

    # Trees on the terrain / sidewalk's outer edge.
    for side_x in (fl + 0.8, fr - 0.8):
        for _ in range(int(rng.integers(0, 4))):
            z = float(rng.uniform(4.0, z_end * 0.8))
            trunk_h = float(rng.uniform(1.8, 3.0))
            r = float(rng.uniform(1.2, 2.8))
            cy = h - trunk_h - r * 0.8
            ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
            rad = r * rng.uniform(0.75, 1.15, size=ang.size)
            crown = np.stack(
                [side_x + rad * np.cos(ang), cy + 0.8 * rad * np.sin(ang), np.full(ang.size, z)], 1
            )
            colour = _jitter(rng, (60, 105, 35), 15)
            trunk = _Poly(VEGETATION, _quad_front(side_x - 0.15, side_x + 0.15, h - trunk_h, h, z), ("front", z),
                          _jitter(rng, (80, 60, 40), 8), kind="plain")  # fmt: skip
            objects.append((z, [trunk, _Poly(VEGETATION, crown, ("front", z), colour, kind="tree")]))

    # Poles at the kerb: street lamps, signs, traffic lights.
    for side in (-1, 1):
        kerb = xl - 0.4 if side < 0 else xr + 0.4
        for _ in range(int(rng.integers(1, 4))):
            z = float(rng.uniform(5.0, z_end * 0.7))
            ph = float(rng.uniform(3.5, 7.5))
            faces = [_Poly(POLE, _quad_front(kerb - 0.08, kerb + 0.08, h - ph, h, z), ("front", z),
                           _jitter(rng, (110, 110, 115), 10), kind="plain")]  # fmt: skip
            kind = rng.random()
            if kind < 0.4:  # a sign
                s = float(rng.uniform(0.5, 0.8))
                sy = h - float(rng.uniform(2.2, min(3.0, ph - 0.2)))
                ang = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8
                if rng.random() < 0.5:
                    pts = np.stack([kerb + s / 2 * np.cos(ang), sy + s / 2 * np.sin(ang), np.full(8, z)], 1)
                else:
                    pts = _quad_front(kerb - s / 2, kerb + s / 2, sy - s / 2, sy + s / 2, z)
                colour = _jitter(rng, _SIGN_COLOURS[int(rng.integers(len(_SIGN_COLOURS)))], 8)
                faces.append(_Poly(SIGN, pts, ("front", z), colour, kind="plain"))
            elif kind < 0.65:  # a traffic light
                ly = h - min(ph - 0.5, float(rng.uniform(2.5, 3.5)))
                faces.append(_Poly(LIGHT, _quad_front(kerb - 0.18, kerb + 0.18, ly - 0.5, ly + 0.5, z), ("front", z),
                                   (35, 35, 30), kind="plain"))  # fmt: skip
                col = [(255, 40, 30), (255, 190, 30), (40, 255, 90)][int(rng.integers(3))]
                lights3d.append((np.array([kerb, ly, z]), col))
            else:  # a street lamp
                lamps3d.append(np.array([kerb, h - ph, z]))
            objects.append((z, faces))

    # Cars in the lanes (moving away in lanes right of the centre, towards us on the left) and parked.
    cars: list[dict[str, Any]] = []
    occupied: list[tuple[float, float, float, float]] = []
    n_cars = int(rng.integers(1, 7))
    for _ in range(n_cars * 3):
        if len(cars) >= n_cars:
            break
        size = rng.random()
        if size < 0.25:
            dims = (rng.uniform(3.4, 3.9), rng.uniform(1.55, 1.7), rng.uniform(1.40, 1.55))
        elif size < 0.8:
            dims = (rng.uniform(4.2, 4.8), rng.uniform(1.75, 1.9), rng.uniform(1.42, 1.6))
        else:
            dims = (rng.uniform(4.8, 5.4), rng.uniform(1.9, 2.05), rng.uniform(1.8, 2.2))
        length, width, height = (float(v) for v in dims)
        if rng.random() < 0.25:  # parked at the kerb
            cx = xl + width / 2 + 0.3 if rng.random() < 0.5 else xr - width / 2 - 0.3
        else:
            lane = int(rng.integers(0, n_lanes))
            cx = xl + (lane + 0.5) * lane_w + float(rng.normal(0, 0.2))
        cz = float(rng.uniform(4.0 + length / 2, min(60.0, z_end - length)))
        if abs(cx) < width / 2 + 0.3 and cz - length / 2 < 5.0:
            continue  # would sit on the camera
        if any(abs(cx - ox) < (width + ow) / 2 + 0.3 and abs(cz - oz) < (length + ol) / 2 + 1.5
               for ox, oz, ow, ol in occupied):  # fmt: skip
            continue
        occupied.append((cx, cz, width, length))
        facing = 1 if cx > xl + (cam_lane + 0.5) * lane_w - lane_w / 2 else int(rng.choice([-1, 1]))
        colour = _jitter(rng, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))], 12)
        k = len(cars)
        x0, x1, zn, zf, yt = cx - width / 2, cx + width / 2, cz - length / 2, cz + length / 2, h - height
        faces = []
        if x0 > 0:
            faces.append(_Poly(CAR, _quad_side(x0, zn, zf, yt, h), ("side", x0), colour, k, kind="carside"))
        elif x1 < 0:
            faces.append(_Poly(CAR, _quad_side(x1, zn, zf, yt, h), ("side", x1), colour, k, kind="carside"))
        faces.append(_Poly(CAR, _quad_front(x0, x1, yt, h, zn), ("front", zn), colour, k, kind="car"))
        cars.append({"center": (cx, h - height / 2, cz), "dims": (length, width, height), "facing": facing})
        light = (255, 40, 30) if facing > 0 else (255, 250, 220)
        for lx in (x0 + 0.25, x1 - 0.25):
            lights3d.append((np.array([lx, h - height * 0.55, zn - 0.01]), light))
        objects.append((zn, faces))

    # People on the sidewalks.
    n_persons = int(rng.integers(0, 5))
    outline = np.array([[-0.12, 1.0], [0.12, 1.0], [0.14, 0.93], [0.26, 0.82], [0.28, 0.5], [0.16, 0.5],
                        [0.15, 0.0], [0.03, 0.0], [0.0, 0.45], [-0.03, 0.0], [-0.15, 0.0], [-0.16, 0.5],
                        [-0.28, 0.5], [-0.26, 0.82], [-0.14, 0.93]])  # fmt: skip
    for _ in range(n_persons):
        left = rng.random() < 0.5
        px = float(rng.uniform(xl - sw_l + 0.4, xl - 0.4) if left else rng.uniform(xr + 0.4, xr + sw_r - 0.4))
        pz = float(rng.uniform(4.0, 40.0))
        ph = float(rng.uniform(1.55, 1.95))
        pts = np.stack([px + outline[:, 0] * ph / 1.75, h - outline[:, 1] * ph, np.full(len(outline), pz)], 1)
        clothes = _jitter(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))], 10)
        objects.append((pz, [_Poly(PERSON, pts, ("front", pz), clothes, -2 - _, kind="person")]))

    objects.sort(key=lambda o: -o[0])
    for _, faces in objects:
        polys += faces
    return _World(polys, cars, n_persons, lamps3d, lights3d)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _texture(
    rng: np.random.Generator, poly: _Poly, cam: _Cam, z: np.ndarray, m: np.ndarray, emissive: np.ndarray
) -> np.ndarray:
    """Colour (N, 3) float for the masked pixels of one polygon, from its world coordinates."""
    n = int(m.sum())
    base = np.asarray(poly.colour, dtype=np.float64)[None, :].repeat(n, 0)
    zz = z[m]
    xw = (cam.u[m] - cam.u0) * zz / cam.fx
    hag = CAM_HEIGHT - (cam.v[m] - cam.v0) * zz / cam.fy  # height above ground
    grain = rng.normal(0.0, 1.0, size=(n, 1))
    kind = poly.kind
    if kind == "road":
        out = base * (1.0 + 0.06 * grain)
        xs = poly.points[:, 0]
        width = xs.max() - xs.min()
        n_lanes = max(1, int(round(width / 3.2)))
        lane_w = width / n_lanes
        foot = np.maximum(0.5 * zz / cam.fx, 0.08)
        cover = np.minimum(1.0, 0.15 * cam.fx / np.maximum(zz, 1e-3))
        paint = np.zeros(n)
        for k in range(1, n_lanes):
            xk = xs.min() + k * lane_w
            dashed = np.mod(zz, 9.0) < 3.0
            paint = np.maximum(paint, ((np.abs(xw - xk) < foot) & dashed) * cover)
        for xk in (xs.min() + 0.25, xs.max() - 0.25):
            paint = np.maximum(paint, (np.abs(xw - xk) < foot) * cover)
        return out * (1 - paint[:, None]) + 235.0 * paint[:, None]
    if kind == "sidewalk":
        tile = (np.mod(zz, 0.6) < 0.06) | (np.mod(xw, 0.6) < 0.06)
        return base * (1.0 + 0.05 * grain) * np.where(tile, 0.85, 1.0)[:, None]
    if kind == "terrain":
        return base * (1.0 + 0.15 * grain)
    if kind == "tree":
        return base * (1.0 + 0.25 * grain) * (0.8 + 0.2 * np.clip(hag / 6.0, 0, 1))[:, None]
    if kind == "facade":
        along = zz if poly.plane[0] == "side" else xw
        win = (np.mod(along, 3.5) > 1.0) & (np.mod(along, 3.5) < 2.6) & (np.mod(hag, 3.0) > 1.0)
        win &= (np.mod(hag, 3.0) < 2.3) & (hag > 1.5)
        out = base * (1.0 + 0.05 * grain)
        glass = np.array([55.0, 65.0, 80.0]) * (1.0 + 0.15 * grain)
        out = np.where(win[:, None], glass, out)
        # Some windows are lit at night: a hash of the window cell decides which.
        cell = np.floor(along / 3.5) * 7.0 + np.floor(hag / 3.0) * 13.0 + poly.colour[0]
        lit = win & (np.mod(np.sin(cell) * 43758.5453, 1.0) < 0.3)
        emissive[np.flatnonzero(m)[lit] // cam.w, np.flatnonzero(m)[lit] % cam.w] = 0.8
        return out
    if kind == "skyline":
        return base * (1.0 + 0.04 * grain)
    if kind in ("car", "carside"):
        x0, x1 = poly.points[:, 0].min(), poly.points[:, 0].max()
        top = CAM_HEIGHT - poly.points[:, 1].min()
        out = base * (1.0 + 0.04 * grain)
        glass = (hag > 0.6 * top) & (hag < 0.93 * top)
        if kind == "car":
            glass &= (xw > x0 + 0.15) & (xw < x1 - 0.15)
        out = np.where(glass[:, None], np.array([40.0, 45.0, 55.0]), out)
        out = np.where((hag < 0.32)[:, None], np.array([20.0, 20.0, 22.0]), out)
        return out
    if kind == "person":
        top = CAM_HEIGHT - poly.points[:, 1].min()
        skin = np.asarray(_SKIN[int(top * 1000) % len(_SKIN)], dtype=np.float64)
        legs = np.asarray(poly.colour, dtype=np.float64) * 0.5
        out = np.where((hag > 0.86 * top)[:, None], skin, base)
        return np.where((hag < 0.48 * top)[:, None], legs, out) * (1.0 + 0.05 * grain)
    return base * (1.0 + 0.05 * grain)


def render_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Render one clear-weather street scene with all its labels at ``height`` x ``width``.

    Deterministic for the generator's state. The labelIds map equals what cityscapesscripts'
    json2labelImg draws from ``scene.polygons``; instance ids are numbered in polygon order, as
    json2instanceImg numbers them.
    """
    if height < 8 or width < 8:
        raise ValueError(f"render_scene: height and width must be >= 8, got {height}x{width}")
    camera = make_camera(height, width)
    cam = _Cam(camera, height, width)
    world = _layout(rng)

    # 1. Sky: a vertical gradient with soft clouds.
    t = (cam.v / max(cam.v0, 1.0)).clip(0, 1)[..., None]
    top, horizon = np.array(_jitter(rng, (70, 120, 200), 15)), np.array(_jitter(rng, (190, 210, 230), 10))
    image = top * (1 - t) + horizon * t
    clouds = np.clip(_smooth_noise(rng, height, width, max(4, width // 12)), 0, 1)[..., None]
    image = image * (1 - 0.6 * clouds) + 240.0 * 0.6 * clouds
    labelids = np.full((height, width), SKY, np.uint8)
    instanceids = np.full((height, width), SKY, np.int32)
    depth = np.full((height, width), SKY_DEPTH, np.float64)
    emissive = np.zeros((height, width), np.float32)
    objects: list[dict[str, Any]] = [{"label": "sky", "polygon": [[0, 0], [width - 1, 0], [width - 1, height - 1],
                                                                  [0, height - 1]]}]  # fmt: skip
    sky_poly = objects[0]["polygon"]
    labelids[_raster(sky_poly, height, width)] = SKY

    # 2. Painter's order: every object overwrites what it covers. A car is one polygon (the
    #    outline of its visible faces, as a Cityscapes annotator draws it); its faces only give
    #    depth and texture inside that outline.
    groups: list[list[_Poly]] = []
    for poly in world.polys:
        prev = groups[-1][0] if groups else None
        if prev is not None and poly.label == CAR and prev.label == CAR and prev.instance == poly.instance:
            groups[-1].append(poly)
        else:
            groups.append([poly])
    n_inst = {CAR: 0, PERSON: 0}
    inst_of: dict[int, int] = {}  # world instance index -> Cityscapes instance id
    for faces in groups:
        pts2d = np.concatenate([cam.project(f.points) for f in faces])
        if len(faces) > 1:
            pts2d = cv2.convexHull(pts2d.astype(np.float32))[:, 0, :].astype(np.float64)
        outline = _int_outline(pts2d, height, width)
        if not outline:
            continue
        m = _raster(outline, height, width)
        if not m.any():
            continue
        label, instance = faces[0].label, faces[0].instance
        if label in HAS_INSTANCES and instance not in inst_of:
            inst_of[instance] = label * 1000 + n_inst[label]
            n_inst[label] += 1
        # The nearest face (last) covers the whole outline first; then each face its own part.
        for face, fm in [(faces[-1], m)] + [(f, None) for f in faces]:
            if fm is None:
                face_outline = _int_outline(cam.project(face.points), height, width)
                if not face_outline or len(faces) == 1:
                    continue
                fm = _raster(face_outline, height, width) & m
                if not fm.any():
                    continue
            z = cam.plane_depth(face.plane)
            zmin, zmax = float(face.points[:, 2].min()), float(face.points[:, 2].max())
            z = np.where(np.isfinite(z), np.clip(z, zmin, zmax), zmax)
            image[fm] = _texture(rng, face, cam, z, fm, emissive)
            depth[fm] = z[fm]
        labelids[m] = label
        instanceids[m] = inst_of[instance] if label in HAS_INSTANCES else label
        objects.append({"label": LABEL_NAMES[label], "polygon": outline})

    # 3. Ego vehicle bonnet in half of the scenes (Cityscapes label 1, ignored in evaluation).
    if rng.random() < 0.5:
        bh = max(2, int(round(height * rng.uniform(0.05, 0.1))))
        ego = [[-1, height], [-1, height - bh // 2], [width // 4, height - bh], [3 * width // 4, height - bh],
               [width, height - bh // 2], [width, height]]  # fmt: skip
        m = _raster(ego, height, width)
        image[m] = np.array(_jitter(rng, (40, 40, 45), 10)) * (0.9 + 0.1 * cam.v[m, None] / height)
        labelids[m], instanceids[m] = EGO, EGO
        depth[m] = 1.5
        objects.append({"label": "ego vehicle", "polygon": ego})

    # 4. Emissive light sources (used at night): lamp heads, traffic and car lights.
    lamps = []
    for p, col in world.lights3d:
        u, v = cam.project(p[None])[0]
        iu, iv = int(round(u)), int(round(v))
        if 0 <= iu < width and 0 <= iv < height and depth[iv, iu] >= p[2] - 0.5:
            r = max(1, int(round(0.12 * cam.fx / p[2])))
            cv2.circle(emissive, (iu, iv), r, 1.0, -1)
            cv2.circle(image, (iu, iv), r, tuple(float(c) for c in col), -1)
    for p in world.lamps3d:
        u, v = cam.project(p[None])[0]
        iu, iv = int(round(u)), int(round(v))
        if 0 <= iu < width and 0 <= iv < height and depth[iv, iu] >= p[2] - 0.5:
            cv2.circle(emissive, (iu, iv), max(1, int(round(0.2 * cam.fx / p[2]))), 1.0, -1)
            lamps.append((float(u), float(v)))

    ground = np.isin(labelids, (ROAD, SIDEWALK, TERRAIN))
    image = np.clip(image + rng.normal(0.0, 2.0, size=image.shape), 0, 255).astype(np.uint8)
    depth32 = depth.astype(np.float32)
    boxes = _boxes3d(world, cam, camera, instanceids, inst_of, height, width)
    polygons = {"imgHeight": height, "imgWidth": width, "objects": objects}
    return Scene(
        image=image,
        labelids=labelids,
        instanceids=instanceids,
        depth=depth32,
        disparity=depth_to_disparity(depth32, camera),
        camera=camera,
        boxes3d=boxes,
        polygons=polygons,
        ground=ground,
        emissive=emissive,
        lamps=lamps,
    )


def _boxes3d(
    world: _World,
    cam: _Cam,
    camera: dict[str, Any],
    instanceids: np.ndarray,
    inst_of: dict[int, int],
    height: int,
    width: int,
) -> dict[str, Any]:
    """gtBbox3d json: one object per visible car, centre/dims/rotation in the ISO 8855 frame."""
    objects = []
    for k, car in enumerate(world.cars):
        if k not in inst_of:
            continue  # fully hidden or outside the image
        iid = inst_of[k]
        ys, xs = np.nonzero(instanceids == iid)
        if len(xs) == 0:
            continue
        cx, cy, cz = car["center"]
        length, w, hgt = car["dims"]
        corners = np.array([[cx + sx * w / 2, cy + sy * hgt / 2, cz + sz * length / 2]
                            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])  # fmt: skip
        uv = cam.project(corners)
        ax0, ay0 = np.clip(uv.min(0), 0, [width - 1, height - 1])
        ax1, ay1 = np.clip(uv.max(0), 0, [width - 1, height - 1])
        mx0, my0, mx1, my1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        full_area = max((uv[:, 0].max() - uv[:, 0].min()) * (uv[:, 1].max() - uv[:, 1].min()), 1e-6)
        inside_area = max((ax1 - ax0) * (ay1 - ay0), 0.0)
        # Camera frame (X right, Y down, Z forward) -> vehicle frame (x forward, y left, z up).
        centre_v = [cz + _CAM_X, -cx + _CAM_Y, CAM_HEIGHT - cy]
        rotation = [1.0, 0.0, 0.0, 0.0] if car["facing"] > 0 else [0.0, 0.0, 0.0, 1.0]
        objects.append(
            {
                "2d": {
                    "modal": [mx0, my0, mx1 - mx0, my1 - my0],
                    "amodal": [float(ax0), float(ay0), float(ax1 - ax0), float(ay1 - ay0)],
                },
                "3d": {
                    "center": [float(c) for c in centre_v],
                    "dimensions": [float(length), float(w), float(hgt)],
                    "rotation": rotation,
                    "type": "Mid Size Car",
                    "format": "CRS_ISO8855",
                },
                "occlusion": float(1.0 - min(1.0, len(xs) / max(inside_area, 1.0))),
                "truncation": float(1.0 - min(1.0, inside_area / full_area)),
                "instanceId": int(iid),
                "label": "car",
                "score": 1.0,
            }
        )
    k = camera["intrinsic"]
    sensor = {
        "sensor_T_ISO_8855": [
            [1.0, 0.0, 0.0, -_CAM_X],
            [0.0, 1.0, 0.0, -_CAM_Y],
            [0.0, 0.0, 1.0, -CAM_HEIGHT],
        ],
        "fx": k["fx"],
        "fy": k["fy"],
        "u0": k["u0"],
        "v0": k["v0"],
        "baseline": camera["extrinsic"]["baseline"],
    }
    return {"imgWidth": width, "imgHeight": height, "sensor": sensor, "objects": objects, "ignore": []}


# ---------------------------------------------------------------------------------------------
# Weather
# ---------------------------------------------------------------------------------------------


def _ground_from_depth(depth: np.ndarray) -> np.ndarray:
    """Horizontal surfaces from depth alone: depth falls quickly down the rows on the ground only.

    On the road plane -dZ/dv / Z = Z / (fy h), about 2/H at any resolution; facades and
    fronto-parallel objects have dZ/dv near 0.
    """
    h = depth.shape[0]
    d = depth.astype(np.float64)
    grad = np.zeros_like(d)
    grad[:-1] = (d[:-1] - d[1:]) / np.maximum(d[:-1], 1e-3)
    return (grad * h > 0.8) & (d < SKY_DEPTH)


def _glow(emissive: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(emissive.astype(np.float32), (0, 0), sigmaX=max(sigma, 0.5))


def apply_weather(
    image: np.ndarray,
    depth: np.ndarray,
    weather: str,
    rng: np.random.Generator,
    *,
    ground: np.ndarray | None = None,
    emissive: np.ndarray | None = None,
    lamps: Sequence[tuple[float, float]] = (),
) -> np.ndarray:
    """Render ``weather`` (clear/fog/night/rain/snow) on a clear image, using its depth (metres).

    ``ground`` (horizontal surfaces), ``emissive`` (light sources, [0, 1]) and ``lamps`` (street
    lamp image positions) come from ``Scene``; when absent, ground is estimated from the depth and
    night uses the brightest pixels as light sources. Returns a new HxWx3 uint8 image.
    """
    if weather not in ALL_WEATHERS:
        raise ValueError(f"apply_weather: unknown weather {weather!r}; allowed: {list(ALL_WEATHERS)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != depth.shape:
        raise ValueError(f"apply_weather: image {image.shape} and depth {depth.shape} must be HxWx3 and HxW")
    if weather == "clear":
        return image.copy()
    h, w = depth.shape
    img = image.astype(np.float32) / 255.0
    z = np.minimum(depth.astype(np.float32), SKY_DEPTH)[..., None]
    if ground is None:
        ground = _ground_from_depth(depth)
    g = ground.astype(np.float32)[..., None]
    scale = w / 256.0  # effects are sized relative to the image

    out: np.ndarray
    if weather == "fog":
        visibility = float(rng.uniform(40.0, 110.0))  # metres (beta = 3.912 / visibility)
        t = np.exp(-3.912 / visibility * z)
        airlight = np.array([0.82, 0.84, 0.86], np.float32) * float(rng.uniform(0.9, 1.05))
        out = img * t + airlight * (1.0 - t)
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=max(0.4, 0.6 * scale))
    elif weather == "night":
        if emissive is None:
            lum = img.mean(axis=2)
            emissive = (lum > np.quantile(lum, 0.995)).astype(np.float32)
        e = emissive.astype(np.float32)[..., None]
        out = (img**2.2) * float(rng.uniform(0.06, 0.12)) * np.array([0.8, 0.85, 1.1], np.float32)
        out = out * np.exp(-z / 60.0)  # ambient light fades with distance
        # Ego headlights: a cone on the near road.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cone = np.exp(-(((xx - w / 2) / (0.25 * w + 0.4 * (yy - h / 2).clip(0))) ** 2))
        out += (img**2.2) * g * (cone * np.exp(-z[..., 0] / 25.0))[..., None] * 0.6
        for u, v in lamps:  # pools of light under street lamps
            pool = np.exp(-(((xx - u) / (0.12 * w)) ** 2 + ((yy - v - 0.25 * h) / (0.2 * h)) ** 2))
            out += (img**2.2) * (0.3 + 0.7 * g) * pool[..., None] * np.array([0.9, 0.75, 0.45], np.float32)
        lit = img * e + np.array([1.0, 0.85, 0.55], np.float32) * e * 0.4
        out = out * (1 - e) + lit
        glow = _glow(e[..., 0], 3.0 * scale + 1.0)[..., None]
        out += glow * np.array([1.0, 0.8, 0.5], np.float32) * 0.9
        out = out + rng.normal(0.0, 0.015, size=out.shape).astype(np.float32)
    elif weather == "rain":
        t = np.exp(-3.912 / float(rng.uniform(150.0, 300.0)) * z)
        grey = img.mean(axis=2, keepdims=True)
        out = (0.55 * img + 0.45 * grey) * 0.62 + 0.05
        out = out * t + np.array([0.45, 0.47, 0.5], np.float32) * (1 - t)
        # Wet road: darker, with a blurred mirror of the scene above it.
        refl = cv2.GaussianBlur(np.ascontiguousarray(out[::-1]), (0, 0), sigmaX=1.0 + 2.0 * scale)
        out = out * (1 - g) + g * (0.55 * out + 0.35 * refl)
        # Streaks: short slanted lines, motion-blurred.
        layer: np.ndarray = np.zeros((h, w), np.float32)
        n = int(rng.integers(150, 300) * (h * w) / (256 * 512)) + 20
        ang = float(rng.uniform(-0.35, 0.35))
        for _ in range(n):
            x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            length = float(rng.uniform(0.04, 0.12)) * h
            x1, y1 = x0 + length * np.sin(ang), y0 + length * np.cos(ang)
            cv2.line(layer, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0.3, 0.8)), 1)
        layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=0.5 + 0.3 * scale)
        out = out + 0.45 * layer[..., None]
    else:  # snow
        t = np.exp(-3.912 / float(rng.uniform(120.0, 250.0)) * z)
        grey = img.mean(axis=2, keepdims=True)
        out = (0.6 * img + 0.4 * grey) * 0.85 + 0.08
        out = out * t + np.array([0.8, 0.82, 0.85], np.float32) * (1 - t)
        cover = np.clip(0.75 + 0.25 * _smooth_noise(rng, h, w, max(3, w // 32)), 0, 1)[..., None]
        snow = np.array([0.9, 0.92, 0.95], np.float32) * (
            0.93 + 0.07 * rng.random((h, w, 1), dtype=np.float32)
        )
        out = out * (1 - g * cover) + snow * g * cover
        layer = np.zeros((h, w), np.float32)
        n = int(rng.integers(200, 400) * (h * w) / (256 * 512)) + 25
        for _ in range(n):
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(0, max(1, int(2 * scale)) + 1))
            cv2.circle(layer, (cx, cy), r, float(rng.uniform(0.5, 1.0)), -1)
        layer = cv2.GaussianBlur(layer, (0, 0), sigmaX=0.5)
        out = out * (1 - layer[..., None]) + layer[..., None] * 0.97
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing the datasets
# ---------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> None:
    """PNG via OpenCV (RGB/RGBA given, BGR/BGRA written); 16-bit arrays stay 16-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _weather_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def weather_image(scene: Scene, weather: str, rng: np.random.Generator) -> np.ndarray:
    """``apply_weather`` with everything the scene knows (ground mask, lights, lamps)."""
    return apply_weather(scene.image, scene.depth, weather, rng, ground=scene.ground,
                         emissive=scene.emissive, lamps=scene.lamps)  # fmt: skip


@dataclass(frozen=True)
class CityPreset:
    """Counts and sizes of a procedural city that mimics a real dataset (``--preset``)."""

    n_train: int
    n_val: int
    height: int
    width: int
    acdc: dict[str, tuple[int, int]]  # weather -> (train, val) images
    acdc_height: int
    acdc_width: int

    def scaled(self, fraction: float) -> CityPreset:
        """Every count times ``fraction`` (at least 1): the 1% / 10% rehearsals of the real size."""

        def n(k: int) -> int:
            return max(1, round(k * fraction))

        acdc = {w: (n(t), n(v)) for w, (t, v) in self.acdc.items()}
        return replace(self, n_train=n(self.n_train), n_val=n(self.n_val), acdc=acdc)


# Cityscapes fine annotations (2975 train / 500 val at 1024x2048) and ACDC (1920x1080; 400 train
# images per weather, 100 val - 106 for night), as the official releases count them.
PRESETS: dict[str, CityPreset] = {
    "cityscapes": CityPreset(
        n_train=2975,
        n_val=500,
        height=1024,
        width=2048,
        acdc={"fog": (400, 100), "night": (400, 106), "rain": (400, 100), "snow": (400, 100)},
        acdc_height=1080,
        acdc_width=1920,
    )
}


def _city_jobs(n_train: int, n_val: int, acdc: dict[str, tuple[int, int]]) -> list[tuple[str, str, int]]:
    jobs: list[tuple[str, str, int]] = [("cityscapes", "train", i) for i in range(n_train)]
    jobs += [("cityscapes", "val", i) for i in range(n_val)]
    for w in WEATHERS:
        for s, n in zip(("train", "val"), acdc.get(w, (0, 0))):
            jobs += [("acdc", f"{w}/{s}", i) for i in range(n)]
    return jobs


@dataclass(frozen=True)
class _CityJob:
    """What a worker needs to write one image of the city (picklable, no shared state)."""

    out: Path
    seed: int
    size: tuple[int, int]
    acdc_size: tuple[int, int]
    cities: dict[str, tuple[str, ...]]


def _write_one(job: _CityJob, item: tuple[str, str, int]) -> str:
    dataset, split, i = item
    if dataset == "cityscapes":
        stream = 0 if split == "train" else 1
        scene = render_scene(_weather_rng(job.seed, stream, i), *job.size)
        names = job.cities[split]
        city = names[i % len(names)]
        stem = f"{city}_{i // len(names):06d}_000019"
        _write_cityscapes(job.out / "cityscapes", split, city, stem, scene, ID_COLOURS)
    else:
        weather, sp = split.split("/")
        ci, si = WEATHERS.index(weather), (0 if sp == "train" else 1)
        stream = 10 + 2 * ci + si
        scene = render_scene(_weather_rng(job.seed, stream, i), *job.acdc_size)
        seq = f"GOPR{400 + 20 * ci + 10 * si:04d}"
        stem = f"{seq}_frame_{(i + 1) * 10:06d}"
        adverse = weather_image(scene, weather, _weather_rng(job.seed, 100 + stream, i))
        _write_acdc(job.out / "acdc", weather, sp, seq, stem, scene, adverse, ID_TO_TRAINID, ID_COLOURS)
    return f"{dataset}/{split}"


def generate_city(
    out: str | Path,
    *,
    n_train: int,
    n_val: int,
    n_acdc: int | dict[str, tuple[int, int]],
    height: int = 64,
    width: int = 128,
    acdc_size: tuple[int, int] | None = None,
    seed: int = 0,
    cities: dict[str, Sequence[str]] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a procedural Cityscapes (``out/cityscapes``) and ACDC (``out/acdc``).

    n_train / n_val: Cityscapes images per split (spread over ``cities[split]``). n_acdc: ACDC
    images per weather and per split (train, val) - one number for all, or per weather
    ``{weather: (train, val)}`` - each with its clear ``_ref`` image and labelTrainIds / labelIds /
    labelColor / invIds maps, at ``acdc_size`` (H, W; default the Cityscapes size). ``workers``
    processes render in parallel; every image has its own seeded generator, so the bytes are the
    same for any number of workers. Same arguments -> identical bytes. Returns the two roots and
    the counts written.
    """
    acdc = {w: (n_acdc, n_acdc) for w in WEATHERS} if isinstance(n_acdc, int) else dict(n_acdc)
    counts_in = [("n_train", n_train), ("n_val", n_val)] + [(f"n_acdc[{w}]", min(c)) for w, c in acdc.items()]
    for name, value in counts_in:
        if value < 0:
            raise ValueError(f"generate_city: {name} must be >= 0, got {value}")
    unknown = sorted(set(acdc) - set(WEATHERS))
    if unknown:
        raise ValueError(f"generate_city: unknown ACDC weathers {unknown}; choose among {list(WEATHERS)}")
    if workers < 1:
        raise ValueError(f"generate_city: workers must be >= 1, got {workers}")
    out = Path(out)
    merged = {**DEFAULT_CITIES, **(cities or {})}
    job = _CityJob(
        out, seed, (height, width), acdc_size or (height, width), {k: tuple(v) for k, v in merged.items()}
    )
    items = _city_jobs(n_train, n_val, acdc)
    counts: dict[str, int] = {}
    bar = tqdm(total=len(items), desc="procedural city", disable=not progress, unit="img")
    if workers == 1:
        for item in items:
            key = _write_one(job, item)
            counts[key] = counts.get(key, 0) + 1
            bar.update()
    else:
        import multiprocessing

        # spawn: a worker starts clean (no copied locks or threads from the caller)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for key in pool.imap_unordered(partial(_write_one, job), items, chunksize=4):
                counts[key] = counts.get(key, 0) + 1
                bar.update()
    bar.close()
    counts = {k: counts[k] for k in sorted(counts)}
    return {"cityscapes": out / "cityscapes", "acdc": out / "acdc", "counts": counts, "seed": seed,
            "height": height, "width": width, "acdc_size": list(job.acdc_size)}  # fmt: skip


def _write_cityscapes(
    root: Path, split: str, city: str, stem: str, scene: Scene, colour_lut: np.ndarray
) -> None:
    base = f"{split}/{city}/{stem}"
    _write_png(root / "leftImg8bit" / f"{base}_leftImg8bit.png", scene.image)
    _write_png(root / "gtFine" / f"{base}_gtFine_labelIds.png", scene.labelids)
    _write_png(root / "gtFine" / f"{base}_gtFine_instanceIds.png", scene.instanceids.astype(np.uint16))
    rgba = np.concatenate([colour_lut[scene.labelids], np.full((*scene.labelids.shape, 1), 255, np.uint8)], 2)
    _write_png(root / "gtFine" / f"{base}_gtFine_color.png", rgba)
    _write_json(root / "gtFine" / f"{base}_gtFine_polygons.json", scene.polygons)
    _write_png(root / "disparity" / f"{base}_disparity.png", scene.disparity)
    _write_json(root / "camera" / f"{base}_camera.json", scene.camera)
    _write_json(root / "gtBbox3d" / f"{base}_gtBbox3d.json", scene.boxes3d)


def _write_acdc(
    root: Path,
    weather: str,
    split: str,
    seq: str,
    stem: str,
    scene: Scene,
    adverse: np.ndarray,
    train_lut: np.ndarray,
    colour_lut: np.ndarray,
) -> None:
    _write_png(root / "rgb_anon" / weather / split / seq / f"{stem}_rgb_anon.png", adverse)
    _write_png(root / "rgb_anon" / weather / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png", scene.image)
    gt = root / "gt" / weather / split / seq
    _write_png(gt / f"{stem}_gt_labelTrainIds.png", train_lut[scene.labelids])
    _write_png(gt / f"{stem}_gt_labelIds.png", scene.labelids)
    _write_png(gt / f"{stem}_gt_labelColor.png", colour_lut[scene.labelids])
    # invIds: pixels whose semantics are uncertain in this weather (255) - here the far
    # haze where fog hides everything, else none.
    inv = np.zeros(scene.labelids.shape, np.uint8)
    if weather == "fog":
        inv[(scene.depth > 150.0) & (scene.labelids != SKY)] = 255
    _write_png(gt / f"{stem}_gt_invIds.png", inv)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m factory.data.procedural",
        description="Generate the procedural city in the official Cityscapes and ACDC folder layouts.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (cityscapes/ and acdc/ inside)"
    )
    parser.add_argument("--n-train", type=int, default=200, help="Cityscapes train images")
    parser.add_argument("--n-val", type=int, default=50, help="Cityscapes val images")
    parser.add_argument("--n-acdc", type=int, default=25, help="ACDC images per weather and split")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="the real datasets' counts and sizes (cityscapes: 2975 + 500 at 1024x2048, ACDC at "
        "1920x1080 with its per-weather counts); replaces --n-*/--height/--width",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="with --preset: write this share of every count (e.g. 0.01)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel")
    args = parser.parse_args(argv)
    if args.preset is None:
        info = generate_city(args.out, n_train=args.n_train, n_val=args.n_val, n_acdc=args.n_acdc,
                             height=args.height, width=args.width, seed=args.seed, workers=args.workers)  # fmt: skip
    else:
        if not 0.0 < args.fraction <= 1.0:
            parser.error(f"--fraction {args.fraction}: must be in (0, 1]")
        p = PRESETS[args.preset].scaled(args.fraction)
        info = generate_city(args.out, n_train=p.n_train, n_val=p.n_val, n_acdc=p.acdc, height=p.height,
                             width=p.width, acdc_size=(p.acdc_height, p.acdc_width), seed=args.seed,
                             workers=args.workers)  # fmt: skip
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in info.items()}, indent=2))
    return info


# the city is written from scratch on every run (same seed, same files)
if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt="rerun the same command: it writes the city again from the start"))
