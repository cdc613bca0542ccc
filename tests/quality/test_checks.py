"""Quality checks on constructed images: NaN/inf, black, constant, label consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.config import ConfigError, load_config
from factory.data.labels import colorize, trainid_to_id
from factory.quality import QualityConfig, check_output, check_sample, label_consistency
from factory.quality.segmenter import Segmenter, SegmenterConfig, TinyUNet
from factory.synth.synthesizer import SynthOutput


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded: two OpenMP threads on the shared 2-core machine spin-wait (~80x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ColourSegmenter:
    """A deterministic segmenter: each pixel gets the trainId whose palette colour is nearest.

    On an image made by colouring a label map it recovers the labels exactly, so the expected
    label-consistency score of every test image is known.
    """

    def __init__(self):
        self.palette = colorize(np.arange(19, dtype=np.uint8)[None]).reshape(19, 3).astype(np.int32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        d = ((images[..., None, :].astype(np.int32) - self.palette) ** 2).sum(-1)
        return d.argmin(-1).astype(np.uint8)


def scene_labels(h: int = 32, w: int = 64) -> np.ndarray:
    """Road at the bottom, sky at the top, a building and a car: trainIds."""
    lab = np.full((h, w), 2, np.uint8)  # building
    lab[: h // 4] = 10  # sky
    lab[h // 2 :] = 0  # road
    lab[h // 2 : 3 * h // 4, w // 4 : w // 2] = 13  # car
    lab[-2:, :4] = 255  # ignore
    return lab


def noise_image(seed: int = 0, h: int = 32, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_normal_image_passes_with_scores():
    r = check_sample(noise_image())
    assert r.ok and r.reason is None
    assert r.scores["std"] > 50 and 100 < r.scores["mean"] < 155


def test_black_and_constant_images_are_rejected():
    black = np.zeros((32, 64, 3), np.uint8)
    black[0, 0] = 3  # not exactly constant, still black
    r = check_sample(black)
    assert not r.ok and r.reason.startswith("black:")
    grey = np.full((32, 64, 3), 128, np.uint8)
    grey += np.random.default_rng(0).integers(0, 3, grey.shape, dtype=np.uint8)
    r = check_sample(grey)
    assert not r.ok and r.reason.startswith("constant:") and r.scores["std"] < 4
    assert check_sample(grey, cfg=QualityConfig(min_std=0.5)).ok


def test_nonfinite_float_images_are_rejected_before_uint8_conversion():
    img = np.random.default_rng(0).random((32, 64, 3)).astype(np.float32)
    assert check_sample(img).ok
    img[3, 4, 1] = np.nan
    img[5, 6, 0] = np.inf
    r = check_sample(img)
    assert not r.ok and r.reason.startswith("nonfinite: 2 of") and r.scores["nonfinite"] == 2
    # The same image cast to uint8 without the check would look like a normal image.
    assert check_sample((np.nan_to_num(img, nan=0.0, posinf=1.0) * 255).astype(np.uint8)).ok


def test_missing_and_malformed_images():
    assert check_sample(None).reason.startswith("missing")
    assert check_sample(np.zeros((32, 64), np.uint8)).reason.startswith("shape")


def test_synth_outputs_carry_nan_counts_and_errors():
    base = dict(key="a__fog", source_key="a", variant="fog", seed=1, prompt="p", negative_prompt="")
    nan = SynthOutput(image=None, error="nonfinite: 12 of 99 ...", nonfinite=12, **base)
    r = check_output(nan)
    assert not r.ok and r.reason.startswith("nonfinite") and r.scores["nonfinite"] == 12
    good = SynthOutput(image=noise_image(), error=None, **base)
    r = check_output(good)
    assert r.ok and r.scores["nonfinite"] == 0
    failed = SynthOutput(image=None, error="prompt: word 'x' does not occur", **base)
    assert check_output(failed).reason.startswith("prompt")


def test_label_consistency_scores_and_gates():
    seg = ColourSegmenter()
    labels = scene_labels()
    faithful = colorize(labels)
    faithful[labels == 255] = 0
    cfg = QualityConfig(min_label_miou=0.5)
    r = check_sample(faithful, labels, seg, cfg)
    assert r.ok and r.scores["label_miou"] == pytest.approx(1.0)
    # The same scene upside down: the layout no longer matches the reused labels.
    r = check_sample(faithful[::-1].copy(), labels, seg, cfg)
    assert not r.ok and r.reason.startswith("label_consistency:")
    assert r.scores["label_miou"] < 0.5
    # Without a threshold the score is recorded but does not gate.
    r = check_sample(faithful[::-1].copy(), labels, seg, QualityConfig())
    assert r.ok and r.scores["label_miou"] < 0.5


def test_label_consistency_labelids_and_smaller_image():
    seg = ColourSegmenter()
    labels = scene_labels(64, 128)
    small = colorize(labels[::2, ::2])  # image generated at half the label resolution
    score = label_consistency(small, trainid_to_id(labels), seg, labelids=True)
    assert score > 0.95


def test_threshold_without_segmenter_is_an_error():
    with pytest.raises(ValueError, match="no segmenter"):
        check_sample(noise_image(), scene_labels(), None, QualityConfig(min_label_miou=0.3))


def test_works_with_the_project_segmenter():
    cfg = SegmenterConfig(width_mult=4)
    seg = Segmenter(TinyUNet(cfg.width_mult), cfg)
    r = check_sample(noise_image(), scene_labels(), seg, QualityConfig())
    assert r.ok and 0.0 <= r.scores["label_miou"] <= 1.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("min_std: -1", "min_std"),
        ("min_label_miou: 1.5", "min_label_miou"),
        ("max_attempts: 0", "max_attempts"),
        ("max_attempt: 2", "unknown key max_attempt"),
    ],
)
def test_quality_config_errors(tmp_path, text, match):
    p = tmp_path / "q.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(QualityConfig, p)
