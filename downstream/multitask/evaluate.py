"""Evaluation of the multi-task network: mIoU, depth errors, and Cityscapes 3D detection scores.

- Semantics: the 19-class confusion matrix of downstream.segformer.evaluate (tested equal to the
  official pixel-level evaluator), predictions upsampled to the label resolution.
- Depth: the usual monocular metrics (Eigen et al.) over pixels with a valid disparity and a
  depth up to ``max_depth``: AbsRel = mean |d - d*| / d*, RMSE in metres, delta1 = share of pixels
  with max(d/d*, d*/d) < 1.25.
- 3D boxes: predictions are written one json per image in the Cityscapes 3D format and scored by
  cityscapesscripts' own ``evaluate3dObjectDetection`` against the images' gtBbox3d files (copied
  next to them, so the evaluated set is exactly the images seen). Its Detection Score (mDS)
  combines 2D AP with BEV centre distance, yaw, pitch/roll and size similarity.
  At a reduced resolution the score has a ceiling below 100: the evaluator recomputes predicted
  2D boxes clipped to a 2048x1024 image, while the ground truth is clipped to its own image, so
  truncated boxes can miss the IoU threshold. ``gt_ceiling`` scores the ground truth itself as
  the prediction, the upper bound any network can reach on that set.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from downstream.segformer.evaluate import ConfusionMatrix
from factory.data.sample import DataError, SampleRef

from .data import Prepared, TargetSpec, prepare
from .geometry import SensorView, decode_boxes
from .model import STRIDE, MultiTaskNet


class DepthMetrics:
    """Running sums of the depth errors over valid pixels."""

    def __init__(self, max_depth: float = 80.0):
        self.max_depth = max_depth
        self.n = 0
        self.abs_rel = 0.0
        self.sq = 0.0
        self.delta1 = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"depth prediction {pred.shape} and ground truth {gt.shape} differ in size")
        valid = (gt > 0) & (gt <= self.max_depth)
        p = np.clip(pred[valid].astype(np.float64), 1e-3, None)
        g = gt[valid].astype(np.float64)
        self.n += int(g.size)
        self.abs_rel += float((np.abs(p - g) / g).sum())
        self.sq += float(((p - g) ** 2).sum())
        self.delta1 += int((np.maximum(p / g, g / p) < 1.25).sum())

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "AbsRel": self.abs_rel / n,
            "RMSE": float(np.sqrt(self.sq / n)),
            "delta1": 100.0 * self.delta1 / n,
            "pixels": self.n,
        }


def _official_3d_evaluator():
    """Import cityscapesscripts' 3D evaluator without its import-time side effects.

    The module calls ``logging.basicConfig(filename='eval.log')`` (a file in the current folder)
    and ``coloredlogs.install`` on the root logger when imported; both are undone here.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    if not root.handlers:
        root.addHandler(logging.NullHandler())  # makes basicConfig a no-op: no eval.log
    try:
        from cityscapesscripts.evaluation import evalObjectDetection3d as ev
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logging.getLogger("EvalObjectDetection3d").setLevel(logging.WARNING)
    return ev


def score_3d(
    gt_files: dict[str, Path],
    predictions: dict[str, list[dict[str, Any]]],
    out: Path,
    classes: tuple[str, ...] = ("car",),
    min_iou: float = 0.7,
    max_depth: int = 100,
) -> dict[str, Any]:
    """Run the official 3D evaluator on ``predictions[key]`` against ``gt_files[key]``.

    Writes ``out/gtBbox3d/<key>_gtBbox3d.json`` (copies), ``out/predBbox3d/<key>_pred.json`` and
    the evaluator's ``out/results.json``; returns the evaluator's summary numbers (in percent).
    """
    ev = _official_3d_evaluator()
    gt_dir, pred_dir = out / "gtBbox3d", out / "predBbox3d"
    for d in (gt_dir, pred_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for key, path in gt_files.items():
        shutil.copyfile(path, gt_dir / f"{key}_gtBbox3d.json")
        (pred_dir / f"{key}_pred.json").write_text(json.dumps({"objects": predictions.get(key, [])}))
    params = ev.EvaluationParameters(
        list(classes), min_iou_to_match=min_iou, max_depth=max_depth, step_size=5
    )
    ev.evaluate3dObjectDetection(str(gt_dir), str(pred_dir), str(out), params, plot=False)
    r = json.loads((out / "results.json").read_text())
    pick = ("mDetection_Score", "mAP", "mCenter_Dist", "mSize_Similarity", "mOS_Yaw", "mOS_Pitch_Roll")
    return {k: 100.0 * float(r[k]) for k in pick if k in r}


@torch.no_grad()
def evaluate(
    model: MultiTaskNet,
    refs: Iterable[SampleRef],
    spec: TargetSpec,
    out: Path,
    *,
    max_depth: float = 80.0,
    min_iou: float = 0.7,
    min_score: float = 0.05,
    picture_rows: int = 6,
) -> dict[str, Any]:
    """All three tasks on ``refs`` (Cityscapes val folders): metrics dict, also written to
    ``out/metrics.json``; the 3D evaluator's files go under ``out/det3d``; the first
    ``picture_rows`` images are drawn to ``out/predictions.png`` (boxes | semantics | depth).
    A val sample that fails to load is listed under ``skipped`` with its reason (and left out of
    every metric, the 3D evaluator's ground truth included), the rest is evaluated."""
    from .visualise import prediction_row, save_sheet

    model.eval()
    device = next(model.parameters()).device  # inputs go where the trained weights are
    out.mkdir(parents=True, exist_ok=True)
    cm, dm = ConfusionMatrix(), DepthMetrics(max_depth)
    preds: dict[str, list[dict[str, Any]]] = {}
    gt_files: dict[str, Path] = {}
    rows: list[list[np.ndarray]] = []
    skipped: list[dict[str, str]] = []
    refs = list(refs)
    for ref in tqdm(refs, desc="evaluate", unit="img"):
        try:
            p: Prepared = prepare(ref, spec)
        except DataError as e:
            skipped.append({"key": ref.key, "reason": str(e)})
            continue
        o = {k: v.float().cpu() for k, v in model(p.image[None].to(device)).items()}
        label_size = p.label_trainids.shape
        seg = F.interpolate(o["semantic"], size=label_size, mode="bilinear", align_corners=False)
        seg_pred = seg.argmax(1)[0].numpy().astype(np.uint8)
        cm.update(seg_pred, p.label_trainids)
        log_d = F.interpolate(o["log_depth"][:, None], size=label_size, mode="bilinear", align_corners=False)
        depth_pred = torch.exp(log_d)[0, 0].numpy()
        dm.update(depth_pred, p.label_depth)
        view = SensorView.from_boxes3d(p.boxes3d, spec.size)
        hm = torch.sigmoid(o["heatmap"])[0].numpy()
        preds[ref.key] = decode_boxes(
            hm, o["box_reg"][0].numpy(), view, spec.box_classes, STRIDE, min_score=min_score
        )
        gt_files[ref.key] = ref.paths["boxes3d"]
        if len(rows) < picture_rows:
            gt_objs = [g for g in p.boxes3d["objects"] if g["label"] in spec.box_classes]
            label_view = SensorView.from_boxes3d(p.boxes3d)
            rows.append(
                prediction_row(
                    p.label_image, seg_pred, depth_pred, p.label_depth, gt_objs, preds[ref.key], label_view
                )
            )
    if rows:
        save_sheet(rows, out / "predictions.png")
    metrics = {
        "semantic": cm.summary(),
        "depth": dm.summary(),
        "det3d": score_3d(gt_files, preds, out / "det3d", spec.box_classes, min_iou),
        "images": len(refs) - len(skipped),
        "skipped": skipped,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def gt_ceiling(
    refs: Iterable[SampleRef], out: Path, classes: tuple[str, ...] = ("car",), min_iou: float = 0.7
):
    """The 3D evaluator's score for the ground truth itself used as the prediction."""
    gt_files = {r.key: r.paths["boxes3d"] for r in refs}
    preds = {}
    for key, path in gt_files.items():
        objs = json.loads(Path(path).read_text())["objects"]
        preds[key] = [{**o, "score": 1.0} for o in objs if o["label"] in classes]
    return score_3d(gt_files, preds, out, classes, min_iou)
