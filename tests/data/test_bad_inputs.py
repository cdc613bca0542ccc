"""One test per kind of bad input: the error names the file and the fix; skip mode reports it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from factory.data.acdc import list_acdc
from factory.data.cityscapes import list_cityscapes, load_sample, load_samples
from factory.data.labels import id_to_trainid
from factory.data.sample import DataError


def _first(root, split="train"):
    return list_cityscapes(root / "cityscapes", split).refs[0]


def test_missing_label_for_an_image(small_city):
    ref = _first(small_city)
    ref.paths["labelids"].unlink()
    with pytest.raises(DataError, match="missing labelids label for image .*_leftImg8bit.png") as e:
        list_cityscapes(small_city / "cityscapes", "train")
    assert e.value.path == ref.paths["labelids"] and e.value.fix
    res = list_cityscapes(small_city / "cityscapes", "train", on_error="skip")
    assert len(res.refs) == 2 and [b.path for b in res.bad] == [ref.paths["labelids"]]
    assert ref.key not in {r.key for r in res.refs}


def test_missing_acdc_label(small_city):
    ref = list_acdc(small_city / "acdc", "train").refs[0]
    ref.paths["labeltrainids"].unlink()
    with pytest.raises(DataError, match="missing labeltrainids"):
        list_acdc(small_city / "acdc", "train")
    res = list_acdc(small_city / "acdc", "train", on_error="skip")
    assert len(res.refs) == 3 and len(res.bad) == 1


def test_label_type_absent_is_not_an_error(small_city):
    import shutil

    shutil.rmtree(small_city / "cityscapes" / "gtBbox3d")
    res = list_cityscapes(small_city / "cityscapes", "train")
    assert len(res.refs) == 3 and all("boxes3d" not in r.label_kinds for r in res.refs)
    assert load_sample(res.refs[0]).boxes3d is None


@pytest.mark.parametrize("kind", ["image", "labelids", "disparity"])
def test_truncated_png(small_city, kind):
    ref = _first(small_city)
    data = ref.paths[kind].read_bytes()
    ref.paths[kind].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot be decoded.*truncated") as e:
        load_sample(ref)
    assert e.value.path == ref.paths[kind]
    refs = list_cityscapes(small_city / "cityscapes", "train").refs
    samples, bad = load_samples(refs, on_error="skip")
    assert len(samples) == 2 and len(bad) == 1 and bad[0].path == ref.paths[kind]


def test_label_size_differs_from_image(small_city):
    ref = _first(small_city)
    lab = cv2.imread(str(ref.paths["labelids"]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(ref.paths["labelids"]), cv2.resize(lab, (64, 32), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(DataError, match=r"label size 32x64 differs from the image .* \(64x128\)") as e:
        load_sample(ref)
    assert "resize the image" in e.value.fix


def test_trainids_given_where_labelids_expected(small_city):
    ref = _first(small_city)
    lab = cv2.imread(str(ref.paths["labelids"]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(ref.paths["labelids"]), id_to_trainid(lab))
    with pytest.raises(DataError, match="looks like a trainIds map"):
        load_sample(ref)
    # ... and also without any ignore (255) pixel: most pixels in 0..6 give it away.
    tid = id_to_trainid(lab)
    tid[tid == 255] = 0
    cv2.imwrite(str(ref.paths["labelids"]), tid)
    with pytest.raises(DataError, match="looks like a trainIds map"):
        load_sample(ref)


def test_labelids_given_where_trainids_expected(small_city):
    ref = list_acdc(small_city / "acdc", "val").refs[0]
    ref.paths["labeltrainids"].write_bytes(ref.paths["labelids"].read_bytes())
    with pytest.raises(DataError, match="outside trainIds 0..18/255 \\(it looks like a labelIds map\\)"):
        load_sample(ref)


def test_label_values_outside_encoding(small_city):
    ref = _first(small_city)
    lab = cv2.imread(str(ref.paths["labelids"]), cv2.IMREAD_UNCHANGED)
    lab[:4, :4] = 200
    cv2.imwrite(str(ref.paths["labelids"]), lab)
    with pytest.raises(DataError, match=r"values \[200\] are outside Cityscapes labelIds 0..33"):
        load_sample(ref)


def test_colour_image_given_as_label(small_city):
    ref = _first(small_city)
    ref.paths["labelids"].write_bytes(ref.paths["image"].read_bytes())
    with pytest.raises(DataError, match="expected a single-channel 8-bit label map"):
        load_sample(ref)


def test_instanceids_disagree_with_labelids(small_city):
    ref = _first(small_city)
    inst = cv2.imread(str(ref.paths["instanceids"]), cv2.IMREAD_UNCHANGED)
    inst[:3, :] = 26000
    cv2.imwrite(str(ref.paths["instanceids"]), inst)
    with pytest.raises(DataError, match="pixels name a different class than the labelIds map"):
        load_sample(ref)


def test_malformed_box_json(small_city):
    ref = _first(small_city)
    ref.paths["boxes3d"].write_text('{"imgWidth": 128, "objects": [')
    with pytest.raises(DataError, match="malformed gtBbox3d json") as e:
        load_sample(ref)
    assert e.value.path == ref.paths["boxes3d"]
    box = {
        "imgWidth": 128,
        "imgHeight": 64,
        "objects": [{"label": "car", "2d": {"amodal": [0, 0, 1, 1]}, "3d": {"center": [1, 2]}}],
    }
    ref.paths["boxes3d"].write_text(json.dumps(box))
    with pytest.raises(DataError, match=r"objects\[0\].3d.center must be 3 numbers"):
        load_sample(ref)


def test_malformed_camera_json(small_city):
    ref = _first(small_city)
    ref.paths["camera"].write_text(json.dumps({"intrinsic": {"fx": 1.0}}))
    with pytest.raises(DataError, match="malformed camera json"):
        load_sample(ref)


def test_empty_or_wrong_root(small_city, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="expected a leftImg8bit/ folder"):
        list_cityscapes(empty, "train")
    with pytest.raises(DataError, match="pass .*cityscapes \\(it contains leftImg8bit/\\)"):
        list_cityscapes(small_city, "train")  # the parent of the Cityscapes root
    with pytest.raises(DataError, match="pass its parent"):
        list_cityscapes(small_city / "cityscapes" / "leftImg8bit", "train")
    with pytest.raises(DataError, match=r"split 'test' not found \(splits present: \['train', 'val'\]\)"):
        list_cityscapes(small_city / "cityscapes", "test")
    with pytest.raises(DataError, match="does not exist"):
        list_cityscapes(tmp_path / "nope", "train")
    for f in (small_city / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="no \\*_leftImg8bit.png images found"):
        list_cityscapes(small_city / "cityscapes", "val")
    with pytest.raises(DataError, match="expected a rgb_anon/ folder"):
        list_acdc(empty, "train")
    with pytest.raises(DataError, match="pass .*acdc \\(it contains rgb_anon/\\)"):
        list_acdc(small_city, "train")


def test_check_values_not_triggered_on_clean_data(small_city):
    """The heuristics must accept every clean file (no false alarms)."""
    for split in ("train", "val"):
        refs = (
            list_cityscapes(small_city / "cityscapes", split).refs
            + list_acdc(small_city / "acdc", split).refs
        )
        samples, bad = load_samples(refs, on_error="skip")
        assert bad == [] and len(samples) == len(refs)
    assert np.all([s.image.shape == (64, 128, 3) for s in samples])
