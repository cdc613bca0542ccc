"""Alignment mIoU agrees with cityscapesscripts' own evaluator; pixel accuracy with a direct count.

The predictions are procedural label maps corrupted three ways (random pixels, a shifted block,
and a class the labels never contain), written as labelIds PNGs exactly as a Cityscapes
submission would be, so that the official evaluator and ``factory.eval.alignment`` score the
same files independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from factory.data.labels import IGNORE_INDEX, TRAINID_TO_ID, id_to_trainid
from factory.data.procedural import render_scene
from factory.eval.alignment import (
    TransformersSegmenter,
    alignment,
    miou_from_confusion,
    segmenter_alignment,
)


def corrupted_predictions(seed: int = 0, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labelIds, gt trainIds, predicted trainIds) for ``n`` procedural scenes."""
    rng = np.random.default_rng(seed)
    labelids, gts, preds = [], [], []
    for _ in range(n):
        ids = render_scene(rng, 64, 128).labelids
        gt = id_to_trainid(ids)
        pred = np.where(gt == IGNORE_INDEX, 0, gt).astype(np.uint8)  # void pixels get some class
        flip = rng.random(gt.shape) < 0.15
        pred[flip] = rng.integers(0, 19, flip.sum())
        pred[10:30, 20:60] = np.roll(pred, 7, axis=1)[10:30, 20:60]
        pred[40:44, 100:110] = 18  # bicycle: never in the procedural labels
        labelids.append(ids)
        gts.append(gt)
        preds.append(pred)
    return np.stack(labelids), np.stack(gts), np.stack(preds)


def test_miou_equals_cityscapesscripts_evaluator(tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    labelids, gts, preds = corrupted_predictions()
    gt_files, pred_files = [], []
    for i, (ids, pred) in enumerate(zip(labelids, preds)):
        gt_files.append(str(tmp_path / f"gt_{i}_gtFine_labelIds.png"))
        pred_files.append(str(tmp_path / f"pred_{i}.png"))
        Image.fromarray(ids).save(gt_files[-1])
        Image.fromarray(TRAINID_TO_ID[pred]).save(pred_files[-1])  # a submission holds labelIds
    args = ev.args
    args.quiet = True
    args.JSONOutput = False
    args.evalInstLevelScore = False  # uses np.in1d, removed in numpy 2.4
    args.evalPixelAccuracy = False  # also np.in1d (and it counts the ignored pixels)
    official = ev.evaluateImgLists(pred_files, gt_files, args)
    ours = alignment(preds, gts)
    assert 0.2 < ours["miou"] < 0.95  # a real test: neither trivial nor perfect
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    # a class predicted but absent from the labels counts, at IoU 0, in both
    assert official["classScores"]["bicycle"] == 0.0


def test_pixel_accuracy_is_the_fraction_of_correct_labelled_pixels():
    _, gts, preds = corrupted_predictions(seed=1)
    labelled = gts != IGNORE_INDEX
    direct = np.count_nonzero((preds == gts) & labelled) / np.count_nonzero(labelled)
    assert alignment(preds, gts)["pixel_acc"] == pytest.approx(direct, abs=1e-12)


def test_a_hand_computed_case():
    gt = np.array([[[0, 0, 1, 255]]], np.uint8)
    pred = np.array([[[0, 1, 1, 2]]], np.uint8)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2; class 2 predicted only on ignore: absent
    assert alignment(pred, gt) == {"miou": pytest.approx(0.5), "pixel_acc": pytest.approx(2 / 3)}
    assert np.isnan(miou_from_confusion(np.zeros((19, 19))))
    with pytest.raises(ValueError, match="non-empty"):
        alignment(pred[0], gt[0])


def test_transformers_segmenter_from_a_local_folder(tmp_path):
    """The real-model path: any 19-class semantic-segmentation model saved with save_pretrained."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(num_labels=19, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16)  # fmt: skip
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "seg")
    seg = TransformersSegmenter(tmp_path / "seg")
    _, gts, _ = corrupted_predictions(n=2)
    images = np.stack([render_scene(np.random.default_rng(i), 64, 128).image for i in range(2)])
    pred = seg.predict(images)
    assert pred.shape == (2, 64, 128) and pred.dtype == np.uint8 and pred.max() < 19
    scores = segmenter_alignment(seg, images, gts)
    assert 0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["pixel_acc"] <= 1.0
    SegformerForSemanticSegmentation(SegformerConfig(**{**cfg.to_dict(), "num_labels": 5})).save_pretrained(
        tmp_path / "five"
    )
    with pytest.raises(ValueError, match="19 Cityscapes trainIds"):
        TransformersSegmenter(tmp_path / "five")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        TransformersSegmenter(tmp_path / "nothing")
