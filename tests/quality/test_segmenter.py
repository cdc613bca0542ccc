"""The measuring segmenter: mIoU arithmetic, training actually learns, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from factory.quality.segmenter import (
    IGNORE,
    Segmenter,
    SegmenterConfig,
    TinyUNet,
    labelids_to_trainids,
    miou,
    pixel_accuracy,
    render_training_set,
)


def test_miou_known_values():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, IGNORE]], np.uint8)
    assert miou(gt.copy(), gt) == 1.0
    pred = np.array([[0, 0, 0, 0], [0, 0, 1, 5]], np.uint8)
    # class 0: inter 4, union 6; class 1: inter 1, union 3; ignored pixel does not count
    assert miou(pred, gt) == pytest.approx((4 / 6 + 1 / 3) / 2)
    assert pixel_accuracy(pred, gt) == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="shape"):
        miou(pred[:1], gt)


def test_labelids_to_trainids_cityscapes_table():
    ids = np.array([[7, 8, 26, 0, 23]], np.uint8)  # road, sidewalk, car, unlabeled, sky
    assert labelids_to_trainids(ids).tolist() == [[0, 1, 13, IGNORE, 10]]


def test_trains_beats_trivial_and_round_trips(tmp_path):
    cfg = SegmenterConfig(n_scenes=16, steps=40, batch_size=4, width_mult=8, seed=0)
    seg = Segmenter.train_procedural(cfg)
    images, labels = render_training_set(SegmenterConfig(n_scenes=4, seed=99))
    pred = seg.predict(images)
    assert pred.shape == labels.shape and pred.dtype == np.uint8
    # majority-class baseline: predict the most frequent trainId everywhere
    valid = labels[labels != IGNORE]
    trivial = np.full_like(labels, np.bincount(valid).argmax())
    assert pixel_accuracy(pred, labels) > pixel_accuracy(trivial, labels)
    seg.save(tmp_path / "seg")
    again = Segmenter.load(tmp_path / "seg")
    assert np.array_equal(again.predict(images), pred)
    assert again.predict(images[0]).shape == labels[0].shape
    with pytest.raises(FileNotFoundError, match="segmenter file missing"):
        Segmenter.load(tmp_path / "nope")


def test_loads_an_older_sidecar_that_calls_the_weathers_conditions(tmp_path):
    """Segmenters saved before the field was renamed store ``"conditions"`` in their JSON."""
    import json

    cfg = SegmenterConfig(width_mult=4, weathers=("clear", "fog"))
    Segmenter(TinyUNet(cfg.width_mult), cfg).save(tmp_path / "seg")
    sidecar = tmp_path / "seg.json"
    info = json.loads(sidecar.read_text())
    assert info["config"]["weathers"] == ["clear", "fog"]
    info["config"]["conditions"] = info["config"].pop("weathers")
    sidecar.write_text(json.dumps(info))
    assert Segmenter.load(tmp_path / "seg").cfg == cfg


def test_cli_trains_saves_and_names_a_bad_field(tmp_path, capsys):
    from factory.config import ConfigError
    from factory.quality.segmenter import main

    out = tmp_path / "judge"
    assert main(["--out", str(out), "--threads", "1", "steps=2", "n_scenes=4", "height=32", "width=64"]) == 0
    seg = Segmenter.load(out)
    assert (seg.cfg.steps, seg.cfg.height, seg.cfg.width) == (2, 32, 64)
    assert seg.predict(np.zeros((32, 64, 3), np.uint8)).shape == (32, 64)
    assert str(out.with_suffix(".safetensors")) in capsys.readouterr().out
    with pytest.raises(ConfigError, match="steps"):
        main(["--out", str(out), "steps=0"])
