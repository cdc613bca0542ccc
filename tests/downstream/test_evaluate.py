"""Our mIoU equals cityscapesscripts' official pixel-level evaluator on the same predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.segformer.evaluate import ConfusionMatrix, official_cityscapes_miou, predict_and_score
from downstream.segformer.labels import LABELID_TO_TRAINID, trainids_to_labelids

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "downstream"


def _gt_files(cs_root: Path) -> list[Path]:
    return sorted((cs_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))


def test_perturbed_predictions_match_official(cs_root, tmp_path):
    """Predictions = ground truth with blocks of wrong classes (rich confusions, some classes absent)."""
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix()
    pred_dir = tmp_path / "results"
    pred_dir.mkdir()
    gts = _gt_files(cs_root)
    for gt_path in gts:
        gt = LABELID_TO_TRAINID[np.asarray(Image.open(gt_path))]
        pred = np.where(gt == 255, rng.integers(0, 19), gt).astype(np.uint8)
        for _ in range(6):  # paint random rectangles with random classes
            y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 16)
            pred[y : y + 8, x : x + 16] = rng.integers(0, 19)
        cm.update(pred, gt)
        key = gt_path.name[: -len("_gtFine_labelIds.png")]
        Image.fromarray(trainids_to_labelids(pred)).save(pred_dir / f"{key}_pred_labelIds.png")
    official = official_cityscapes_miou(pred_dir, gts)
    assert 10.0 < cm.miou() < 100.0
    assert abs(cm.miou() - official["mIoU"]) < 0.01, (cm.miou(), official["mIoU"])
    ours = cm.summary()["per_class"]
    for name, v in official["per_class"].items():
        if name in ours:
            assert (ours[name] is None) == np.isnan(v) and (
                ours[name] is None or abs(ours[name] - 100 * v) < 1e-6
            ), name


def test_model_predictions_match_official_and_mmseg(city_env, cs_root, tmp_path):
    """A (briefly initialised) tiny SegFormer's predictions, through our loop, mmseg's IoUMetric and the official tool."""
    from mmengine.config import Config
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import DATASETS, MODELS

    torch.manual_seed(0)
    cfg = Config.fromfile(str(CONFIG_DIR / "segformer_tiny_procedural-64x128.py"))
    model = MODELS.build(cfg.model)
    model.init_weights()
    ds = DATASETS.build(cfg.val_dataloader.dataset)
    cm = predict_and_score(model, ds, write_dir=tmp_path / "results")
    official = official_cityscapes_miou(tmp_path / "results", _gt_files(cs_root))
    assert np.isfinite(cm.miou())
    assert abs(cm.miou() - official["mIoU"]) < 0.01

    from mmengine.dataset import pseudo_collate

    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = ds.metainfo
    model.eval()
    with torch.no_grad():
        for i in range(len(ds)):
            outs = model.test_step(pseudo_collate([ds[i]]))
            metric.process({}, [o.to_dict() for o in outs])
    mm = metric.compute_metrics(metric.results)["mIoU"]  # mmseg rounds to 2 decimals
    assert abs(mm - cm.miou()) <= 0.006


def test_confusion_matrix_rejects_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        ConfusionMatrix().update(np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8))
