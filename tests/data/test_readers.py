"""Readers round-trip the procedural city: every written file is listed and decodes correctly."""

from __future__ import annotations

import numpy as np
import pytest

from factory.config import ConfigError, from_dict
from factory.data.acdc import list_acdc
from factory.data.cityscapes import disparity_to_depth, list_cityscapes, load_sample
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.labels import (
    CLASS_NAMES,
    ID_TO_TRAINID,
    NUM_CLASSES,
    TRAINID_TO_ID,
    colorize,
    colorize_ids,
    id_to_trainid,
)
from factory.data.procedural import CAM_HEIGHT, _write_cityscapes, render_scene


def test_label_tables_follow_cityscapesscripts():
    from cityscapesscripts.helpers.labels import id2label, trainId2label

    assert NUM_CLASSES == 19 and CLASS_NAMES[0] == "road" and CLASS_NAMES[-1] == "bicycle"
    for i in range(34):
        t = id2label[i].trainId
        assert ID_TO_TRAINID[i] == (255 if t in (-1, 255) else t)
    for t in range(19):
        assert trainId2label[t].id == TRAINID_TO_ID[t]
        assert tuple(colorize(np.array([[t]]))[0, 0]) == trainId2label[t].color
    assert ID_TO_TRAINID[200] == 255
    ids = np.array([[7, 26, 0]], np.uint8)
    assert id_to_trainid(ids).tolist() == [[0, 13, 255]]
    assert tuple(colorize_ids(ids)[0, 1]) == (0, 0, 142)


def test_cityscapes_round_trip(city_root):
    root = city_root / "cityscapes"
    written = {p for p in root.rglob("*") if p.is_file()}
    listed = set()
    for split, n in (("train", 6), ("val", 4)):
        res = list_cityscapes(root, split)
        assert len(res.refs) == n and res.bad == []
        for ref in res.refs:
            assert set(ref.label_kinds) == {
                "labelids",
                "instanceids",
                "color",
                "polygons",
                "disparity",
                "boxes3d",
                "camera",
            }
            assert ref.meta == {
                "dataset": "cityscapes",
                "split": split,
                "city": ref.meta["city"],
                "weather": "clear",
            }
            assert ref.key.startswith(ref.meta["city"] + "_")
            listed |= set(ref.paths.values())
            s = load_sample(ref)
            assert s.image.shape == (64, 128, 3) and s.image.dtype == np.uint8
            assert s.semantic.shape == (64, 128) and s.semantic.dtype == np.uint8 and s.semantic.max() <= 33
            assert s.instance.dtype == np.int32 and s.instance.shape == (64, 128)
            assert s.disparity.dtype == np.uint16 and s.disparity.max() > 256
            assert s.camera["intrinsic"]["fx"] > 0 and isinstance(s.boxes3d["objects"], list)
            # Road depth from the disparity matches the ground plane seen by the camera.
            depth = disparity_to_depth(s.disparity, s.camera)
            v = np.nonzero(s.semantic == 7)[0]
            near = (s.semantic == 7) & (depth > 0)
            z = depth[near]
            z_plane = (
                s.camera["intrinsic"]["fy"]
                * CAM_HEIGHT
                / (v[depth[s.semantic == 7] > 0] - s.camera["intrinsic"]["v0"])
            )
            ok = z_plane < 60  # exclude the clipped far edge of the road
            np.testing.assert_allclose(z[ok], z_plane[ok], rtol=0.06)
        assert s.image.std() > 10
    assert listed == written  # every file the generator writes is found


def test_disparity_to_depth_within_quantisation(tmp_path):
    scene = render_scene(np.random.default_rng(5), 64, 128)
    from factory.data.labels import ID_COLOURS

    _write_cityscapes(tmp_path / "cs", "val", "lindau", "lindau_000000_000019", scene, ID_COLOURS)
    ref = list_cityscapes(tmp_path / "cs", "val").refs[0]
    s = load_sample(ref)
    np.testing.assert_array_equal(s.disparity, scene.disparity)
    depth = disparity_to_depth(s.disparity, s.camera)
    valid = s.disparity > 0
    assert valid.mean() > 0.5 and (depth[~valid] == 0).all()
    bf = scene.camera["extrinsic"]["baseline"] * scene.camera["intrinsic"]["fx"]
    # Disparity is stored at 1/256 px: the decoded disparity is within half a step of the truth.
    d_true, d_dec = bf / scene.depth[valid], bf / depth[valid]
    assert np.abs(d_true - d_dec).max() <= 0.5 / 256 + 1e-6


def test_acdc_round_trip(city_root):
    root = city_root / "acdc"
    written = {p for p in root.rglob("*") if p.is_file()}
    listed = set()
    for split in ("train", "val"):
        res = list_acdc(root, split)
        assert len(res.refs) == 4 * 3 and res.bad == []
        assert [r.meta["weather"] for r in res.refs] == [
            w for w in ("fog", "night", "rain", "snow") for _ in range(3)
        ]
        for ref in res.refs:
            assert set(ref.paths) == {"image", "ref_image", "labeltrainids", "labelids", "color", "invids"}
            listed |= set(ref.paths.values())
            s = load_sample(ref)
            assert s.trainids.dtype == np.uint8 and set(np.unique(s.trainids)) <= set(range(19)) | {255}
            np.testing.assert_array_equal(id_to_trainid(s.semantic), s.trainids)
            assert s.instance is None and s.disparity is None
    assert listed == written
    fog = list_acdc(root, "val", weathers=("fog",))
    assert len(fog.refs) == 3 and all(r.meta["weather"] == "fog" for r in fog.refs)


def test_dataset_config_and_list_samples(city_root):
    cfg = from_dict(
        DatasetConfig,
        {"kind": "cityscapes", "root": str(city_root / "cityscapes"), "split": "val", "limit": 2},
    )
    assert [r.meta["split"] for r in list_samples(cfg).refs] == ["val", "val"]
    cfg = DatasetConfig(kind="acdc", root=city_root / "acdc", split="train", weathers=["night"])
    assert len(list_samples(cfg).refs) == 3
    cfg = DatasetConfig(kind="cityscapes", root=city_root / "cityscapes", split="train", cities=["aachen"])
    assert {r.meta["city"] for r in list_samples(cfg).refs} == {"aachen"}
    with pytest.raises(ConfigError, match="weathers"):
        from_dict(DatasetConfig, {"kind": "acdc", "weathers": ["hail"]})
    with pytest.raises(ConfigError, match="limit"):
        from_dict(DatasetConfig, {"limit": -1})
