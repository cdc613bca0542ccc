"""Evaluation: a 19-class confusion matrix -> mIoU, and a bridge to the official Cityscapes evaluator.

Our mIoU follows cityscapesscripts' definition exactly: pixels whose ground truth is ignored
(trainId 255) are dropped; IoU_c = TP / (TP + FP + FN) summed over the whole set (not per
image); classes absent from both ground truth and prediction are left out of the mean. The
test suite checks it against ``evalPixelLevelSemanticLabeling`` on the same predictions.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from downstream.checkpoints import load_checkpoint
from factory.cli import STARTS_OVER, run_cli

from .labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, trainids_to_labelids


class ConfusionMatrix:
    """``cm[gt, pred]`` pixel counts over the 19 trainIds (ignore pixels dropped)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        keep = gt != IGNORE_INDEX
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        if g.size and (g.max() >= self.num_classes or p.max() >= self.num_classes or p.min() < 0):
            raise ValueError("labels outside 0..18 (and 255) reached the confusion matrix")
        self.cm += np.bincount(g * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN where the class is in neither ground truth nor prediction."""
        tp = np.diag(self.cm).astype(np.float64)
        denom = self.cm.sum(0) + self.cm.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU in percent over the classes that occur."""
        iou = self.iou()
        return float(np.nanmean(iou) * 100.0) if np.isfinite(iou).any() else float("nan")

    def summary(self) -> dict[str, Any]:
        iou = self.iou()
        return {
            "mIoU": self.miou(),
            "per_class": {c: (None if np.isnan(v) else float(v * 100)) for c, v in zip(CLASSES, iou)},
            "pixels": int(self.cm.sum()),
        }


def predict_and_score(
    model: Any, dataset: Any, *, write_dir: str | Path | None = None, desc: str = "eval"
) -> ConfusionMatrix:
    """Run ``model.test_step`` over ``dataset`` (one image at a time, at original resolution).

    With ``write_dir``, each prediction is also written as a labelIds PNG named
    ``<key>_pred_labelIds.png`` - the result layout cityscapesscripts' evaluator searches.
    """
    import torch
    from mmengine.dataset import pseudo_collate

    cm = ConfusionMatrix()
    if write_dir is not None:
        write_dir = Path(write_dir)
        write_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc=desc, leave=False):
            out = model.test_step(pseudo_collate([dataset[i]]))[0]
            pred = out.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
            gt = out.gt_sem_seg.data[0].cpu().numpy().astype(np.uint8)
            cm.update(pred, gt)
            if write_dir is not None:
                key = out.metainfo.get("key") or Path(out.metainfo["img_path"]).stem
                Image.fromarray(trainids_to_labelids(pred)).save(write_dir / f"{key}_pred_labelIds.png")
    return cm


def official_cityscapes_miou(pred_dir: str | Path, gt_label_files: Iterable[str | Path]) -> dict[str, Any]:
    """cityscapesscripts' ``evalPixelLevelSemanticLabeling`` on labelIds predictions in ``pred_dir``.

    Predictions are matched to each ``*_gtFine_labelIds.png`` the official way (file pattern
    ``<city>_<seq>_<frame>*.png`` anywhere under ``pred_dir``). Returns mIoU in percent and
    the per-class IoUs.
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = copy.copy(ev.args)
    args.predictionPath = str(pred_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    gts = [str(g) for g in gt_label_files]
    preds = [ev.getPrediction(args, g) for g in gts]
    result = ev.evaluateImgLists(preds, gts, args)
    return {"mIoU": float(result["averageScoreClasses"]) * 100.0, "per_class": result["classScores"]}


def eval_dataset_cfgs(cfg: Any, acdc_split: str | None = None) -> dict[str, dict]:
    """The benchmark's evaluation sets from a config: ``CS`` (its test set) and one per ACDC weather.

    Configs carry ``acdc_val = dict(data_root, weathers, split)``; each ACDC set reuses the
    config's test pipeline, so every domain is evaluated the same way. ``acdc_split`` (e.g.
    "train") gives the ACDC weathers of that split alone, without CS: the split a benchmark
    chooses its knobs on, so that the one it reports stays unseen.
    """
    test = copy.deepcopy(cfg.test_dataloader.dataset)
    out = {"CS": test} if acdc_split is None else {}
    acdc = cfg.get("acdc_val")
    if acdc:
        for weather in acdc["weathers"]:
            out[weather] = dict(
                type="ACDCDataset",
                data_root=acdc["data_root"],
                weather=weather,
                split=acdc_split or acdc.get("split", "val"),
                pipeline=copy.deepcopy(test["pipeline"]),
                test_mode=True,
            )
    return out


def evaluate_checkpoint(
    config: str | Path, checkpoint: str | Path, *, device: str = "auto"
) -> dict[str, float]:
    """mIoU of a trained checkpoint on the config's CS test set and each ACDC weather.

    The checkpoint is loaded without running any pickled code (``downstream.checkpoints``): a
    file that asks for more than tensors and mmengine's training state is refused by name.
    """
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS

    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.get("default_scope", "mmseg"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MODELS.build(cfg.model)
    # mmengine's checkpoints hold its message hub (HistoryBuffer, numpy arrays) besides the
    # weights: the safe loader accepts exactly those, and refuses any other pickled object.
    state = load_checkpoint(checkpoint)
    model.load_state_dict(state.get("state_dict", state))
    model.to(device)
    return {
        name: predict_and_score(model, DATASETS.build(c), desc=name).miou()
        for name, c in eval_dataset_cfgs(cfg).items()
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    import argparse
    import json

    p = argparse.ArgumentParser(
        prog="python -m downstream.segformer.evaluate",
        description="mIoU of a SegFormer checkpoint on Cityscapes val and each ACDC val weather.",
    )
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--json", default=None, help="also write the scores here")
    a = p.parse_args(argv)
    scores = evaluate_checkpoint(a.config, a.checkpoint)
    print("  ".join(f"{k}: {v:.2f}" for k, v in scores.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(scores, indent=2))
    return scores


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
