"""SILog against its formula on known inputs; the relative-depth alignment; both instruments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.data.cityscapes import disparity_to_depth
from factory.data.procedural import render_scene
from factory.eval.depth import (
    DepthJudge,
    DepthJudgeConfig,
    TransformersDepth,
    align_relative,
    depth_error,
    render_depth_set,
    si_log,
    si_log_error,
)


def test_scale_invariance_pred_c_times_gt_gives_zero():
    gt = np.random.default_rng(0).uniform(2.0, 80.0, (16, 32))
    for c in (1.0, 0.01, 3.7, 1000.0):
        assert si_log_error(c * gt, gt) == pytest.approx(0.0, abs=1e-5)


def test_known_case_by_hand():
    # d = log(pred / gt) = [0, log 2]: mean d^2 = (log 2)^2 / 2, (mean d)^2 = (log 2)^2 / 4
    gt = np.array([[1.0, 1.0]])
    pred = np.array([[5.0, 10.0]])  # the factor 5 is a scale, removed; the factor 2 is not
    assert si_log_error(pred, gt) == pytest.approx(100 * math.sqrt(math.log(2) ** 2 / 4))
    # three pixels, d = [a, b, c]: the variance of d with 1/n
    rng = np.random.default_rng(1)
    gt = rng.uniform(1, 50, 100)
    d = rng.normal(0, 0.3, 100)
    assert si_log_error(gt * np.exp(d), gt) == pytest.approx(100 * np.sqrt(np.var(d)))


def test_invalid_pixels_are_left_out():
    gt = np.array([[1.0, 2.0, 0.0, 4.0]])  # 0 = invalid disparity
    pred = np.array([[2.0, 4.0, 123.0, -1.0]])  # -1: not a depth
    assert si_log_error(pred, gt) == pytest.approx(0.0)
    off = np.array([[1.0, 2.0, 4.0]]), np.array([[2.0, 4.0, 100.0]])  # the last pixel is far off
    assert si_log_error(off[1], off[0]) > 10
    assert si_log_error(off[1], off[0], valid=np.array([[True, True, False]])) == pytest.approx(0.0)
    assert math.isnan(si_log_error(np.ones((1, 2)), np.zeros((1, 2))))
    assert si_log([np.ones((1, 2)), 2 * np.ones((1, 2))], [np.zeros((1, 2)), np.ones((1, 2))]) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        si_log_error(np.ones(3), np.ones(4))


def test_relative_inverse_depth_is_aligned_by_scale_and_shift():
    gt = np.random.default_rng(2).uniform(3.0, 90.0, (8, 16))
    gt[0, :4] = 0  # invalid
    inverse = 0.3 / np.where(gt > 0, gt, 1.0) + 0.05  # what a relative model predicts, up to scale and shift
    depth = align_relative(inverse, gt)
    np.testing.assert_allclose(depth[gt > 0], gt[gt > 0], rtol=1e-6)
    assert si_log_error(depth, gt) == pytest.approx(0.0, abs=1e-4)


def test_depth_judge_learns_the_geometry_and_round_trips(tmp_path):
    cfg = DepthJudgeConfig(n_scenes=24, steps=120, width_mult=4, batch_size=4)
    judge = DepthJudge.train_procedural(cfg)
    images, depths = render_depth_set(DepthJudgeConfig(n_scenes=6, seed=9))
    pred = judge.predict(images)
    assert pred.shape == (6, 64, 128) and (pred > 0).all()
    right = depth_error(judge, images, list(depths))
    wrong = depth_error(judge, images, list(depths[::-1]))  # every image against another scene
    assert right < wrong
    judge.save(tmp_path / "depth")
    again = DepthJudge.load(tmp_path / "depth")
    np.testing.assert_array_equal(again.predict(images), pred)
    assert again.cfg == cfg
    with pytest.raises(FileNotFoundError, match="depth judge file missing"):
        DepthJudge.load(tmp_path / "nothing")


def test_prediction_is_resized_to_the_labels():
    """A synthetic image smaller than its labels: the prediction goes to the label size."""

    class Constant:
        relative = False

        def predict(self, images):
            return np.full(images.shape[:3], 7.0)

    gt = [np.full((64, 128), 3.0)]
    assert depth_error(Constant(), np.zeros((1, 32, 64, 3), np.uint8), gt) == pytest.approx(0.0)


def test_transformers_depth_model_from_a_local_folder(tmp_path):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                            patch_size=8, image_size=64, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=8,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)  # fmt: skip
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "depth")
    scene = render_scene(np.random.default_rng(4), 64, 128)
    gt = disparity_to_depth(scene.disparity, scene.camera)
    relative = TransformersDepth(tmp_path / "depth")
    assert relative.relative  # no depth_estimation_type: metric in the config
    raw = relative.predict(scene.image[None])
    assert raw.shape == (1, 64, 128)
    err = depth_error(relative, scene.image[None], [gt])
    assert np.isfinite(err) and err >= 0
    metric = TransformersDepth(tmp_path / "depth", output="metric")
    assert not metric.relative
