"""The procedural city: determinism, label consistency, geometry and weather domain shift."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory.data.procedural import (
    CAM_HEIGHT,
    SKY_DEPTH,
    WEATHERS,
    apply_weather,
    generate_city,
    render_scene,
    weather_image,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_city(
        tmp_path / "a", n_train=2, n_val=1, n_acdc=1, height=32, width=64, seed=3, progress=False
    )
    b = generate_city(
        tmp_path / "b", n_train=2, n_val=1, n_acdc=1, height=32, width=64, seed=3, progress=False
    )
    generate_city(tmp_path / "c", n_train=2, n_val=1, n_acdc=1, height=32, width=64, seed=4, progress=False)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a["counts"] == b["counts"] and len(da) > 20
    assert da == db
    assert set(da) == set(dc) and da != dc


def test_scene_arrays_are_consistent():
    for seed in range(5):
        s = render_scene(np.random.default_rng(seed), 64, 128)
        assert s.image.shape == (64, 128, 3) and s.image.dtype == np.uint8
        assert s.labelids.dtype == np.uint8 and s.instanceids.dtype == np.int32
        assert s.depth.dtype == np.float32 and s.disparity.dtype == np.uint16
        cls = np.where(s.instanceids >= 1000, s.instanceids // 1000, s.instanceids)
        np.testing.assert_array_equal(cls, s.labelids)
        assert (s.labelids == 7).any()  # road in every scene
        sky = s.labelids == 23
        assert (s.depth[sky] == SKY_DEPTH).all() and (s.disparity[sky] == 0).all()
        assert (s.disparity[~sky & (s.labelids != 1)] > 0).mean() > 0.9
        # Road pixels lie on the ground plane: Z = fy * h / (v - v0).
        k = s.camera["intrinsic"]
        v = np.nonzero(s.labelids == 7)[0].astype(np.float64)
        z_plane = k["fy"] * CAM_HEIGHT / (v - k["v0"])
        road = s.depth[s.labelids == 7]  # the far edge row is clipped to the road's far end
        np.testing.assert_allclose(road, z_plane.clip(1.0, road.max()), rtol=1e-4)


def test_scenes_vary_and_contain_all_object_kinds():
    seen: set[int] = set()
    n_cars = []
    for seed in range(30):
        s = render_scene(np.random.default_rng(seed), 64, 128)
        seen |= set(np.unique(s.labelids).tolist())
        n_cars.append(len(s.boxes3d["objects"]))
    assert {7, 8, 11, 17, 20, 21, 23, 24, 26}.issubset(seen)
    assert max(n_cars) >= 3 and len(set(n_cars)) >= 3


def test_any_resolution():
    s = render_scene(np.random.default_rng(0), 128, 256)
    assert s.image.shape == (128, 256, 3)
    assert s.camera["intrinsic"]["fx"] == pytest.approx(2262.52 * 256 / 2048)
    with pytest.raises(ValueError, match="height and width"):
        render_scene(np.random.default_rng(0), 4, 4)


def test_weather_domain_shift():
    """Each weather moves the image statistics the way it physically should."""
    stats: dict[str, list[tuple[float, float, float, float]]] = {c: [] for c in ("clear", *WEATHERS)}
    for seed in range(6):
        s = render_scene(np.random.default_rng(seed), 64, 128)
        far = (s.depth > 60) & (s.depth < SKY_DEPTH)
        for c in stats:
            img = weather_image(s, c, np.random.default_rng(seed)).astype(np.float64)
            lum = img.mean(axis=2)
            stats[c].append(
                (lum.mean(), lum.std(), lum[s.ground].mean(), lum[far].std() if far.sum() > 20 else np.nan)
            )
    m = {c: np.nanmean(np.array(v), axis=0) for c, v in stats.items()}
    assert m["night"][0] < 0.35 * m["clear"][0]  # night is dark
    assert m["fog"][1] < 0.8 * m["clear"][1]  # fog washes out contrast
    assert m["fog"][3] < 0.5 * m["clear"][3]  # ... most of all far away
    assert m["snow"][2] > m["clear"][2] + 40  # snow whitens the ground
    assert m["rain"][2] < m["clear"][2]  # wet road is darker
    for c in WEATHERS:
        assert np.abs(m[c] - m["clear"])[:3].max() > 10, c


def test_apply_weather_without_scene_extras_and_bad_weather():
    s = render_scene(np.random.default_rng(1), 64, 128)
    rng = np.random.default_rng(0)
    out = apply_weather(s.image, s.depth, "snow", rng)  # ground estimated from depth
    assert out.shape == s.image.shape and out.dtype == np.uint8
    assert out[s.ground].mean() > s.image[s.ground].mean() + 30
    assert (apply_weather(s.image, s.depth, "clear", rng) == s.image).all()
    with pytest.raises(ValueError, match="unknown weather 'hail'"):
        apply_weather(s.image, s.depth, "hail", rng)


def test_cli_help_and_run(tmp_path):
    cmd = [sys.executable, "-m", "factory.data.procedural"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--n-acdc" in out and "--seed" in out
    res = subprocess.run(
        [*cmd, "--out", str(tmp_path), "--n-train", "2", "--n-val", "1", "--n-acdc", "1", "--height", "32", "--width", "64"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    info = json.loads(res.stdout)
    assert info["counts"]["cityscapes/train"] == 2
    assert len(list((tmp_path / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))) == 2


def test_parallel_workers_write_the_same_bytes_and_acdc_has_its_own_size_and_counts(tmp_path):
    """--workers renders in processes: the same files, byte for byte, as one process; ACDC is
    written at its own size with per-weather (train, val) counts (the cityscapes preset's form)."""
    acdc = {"fog": (2, 1), "night": (1, 2), "rain": (1, 1), "snow": (0, 1)}
    kw = dict(
        n_train=3, n_val=2, n_acdc=acdc, height=32, width=64, acdc_size=(24, 48), seed=5, progress=False
    )
    one = generate_city(tmp_path / "one", **kw)
    two = generate_city(tmp_path / "two", workers=2, **kw)
    assert one["counts"] == two["counts"] and _digest(tmp_path / "one") == _digest(tmp_path / "two")
    assert one["counts"]["acdc/night/val"] == 2 and "acdc/snow/train" not in one["counts"]
    from PIL import Image

    cs = next((tmp_path / "one" / "cityscapes" / "leftImg8bit").rglob("*.png"))
    ad = next((tmp_path / "one" / "acdc" / "rgb_anon" / "fog" / "train").rglob("*.png"))
    assert Image.open(cs).size == (64, 32) and Image.open(ad).size == (48, 24)


def test_cityscapes_preset_has_the_official_counts_and_sizes():
    from factory.data.procedural import PRESETS

    p = PRESETS["cityscapes"]
    assert (p.n_train, p.n_val, p.height, p.width) == (2975, 500, 1024, 2048)
    assert (p.acdc_height, p.acdc_width) == (1080, 1920)
    assert sum(t for t, _ in p.acdc.values()) == 1600 and sum(v for _, v in p.acdc.values()) == 406
    small = p.scaled(0.01)
    assert (small.n_train, small.n_val, small.acdc["night"]) == (30, 5, (4, 1)) and small.height == 1024
