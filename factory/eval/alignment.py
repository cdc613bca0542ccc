"""Alignment: does a generated image still show the reference's layout? (Table 2, mIoU)

Why: the factory ships the reference's labels with every synthetic image, so the image must
follow them. A segmenter predicts Cityscapes trainIds on each generated image and the mIoU
against the *reference's* labels says how much of the layout survived synthesis.

- ``alignment(pred, gt)``: mIoU and pixel accuracy of trainId predictions against trainId labels,
  from one confusion matrix summed over the whole set (as cityscapesscripts' evaluator does:
  a class's IoU is TP / (TP + FP + FN) over all images, and the mean is over the classes that
  occur in the labels or the predictions; pixels labelled 255 are ignored).
- the instrument (``Predictor``: uint8 images -> trainIds): offline, the small judge segmenter
  trained on rendered procedural scenes (``factory.quality.segmenter.Segmenter``); with real data,
  ``TransformersSegmenter``, any ``transformers`` semantic-segmentation model whose classes are
  the 19 Cityscapes trainIds (e.g. a SegFormer fine-tuned on Cityscapes) from a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from factory.data.labels import IGNORE_INDEX, NUM_CLASSES


@runtime_checkable
class Predictor(Protocol):
    """uint8 RGB images (B, H, W, 3) -> trainIds uint8 (B, H, W)."""

    def predict(self, images: np.ndarray) -> np.ndarray: ...


def confusion(pred: np.ndarray, gt: np.ndarray, classes: int = NUM_CLASSES) -> np.ndarray:
    """(classes, classes) confusion counts, rows = ground truth; gt == 255 ignored."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    valid = gt != IGNORE_INDEX
    idx = gt[valid].astype(np.int64) * classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def miou_from_confusion(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction (NaN if none)."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    if not present.any():
        return float("nan")
    return float((inter[present] / union[present]).mean())


def miou(pred: np.ndarray, gt: np.ndarray, classes: int = NUM_CLASSES) -> float:
    """Mean IoU of one prediction (ignore 255), see ``miou_from_confusion``."""
    return miou_from_confusion(confusion(pred, gt, classes))


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of non-ignored pixels predicted correctly."""
    valid = gt != IGNORE_INDEX
    return float((pred[valid] == gt[valid]).mean()) if valid.any() else float("nan")


def alignment(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """mIoU and pixel accuracy of trainId predictions (B, H, W) against trainId labels (B, H, W).

    One confusion matrix over the whole set (a class's IoU pools all images, so a class seen in
    one image only is not averaged with zeros from the others).
    """
    if pred.shape != gt.shape or pred.ndim != 3 or len(pred) == 0:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be equal, non-empty (B, H, W) stacks")
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for p, g in zip(pred, gt):
        cm += confusion(p, g)
    total = cm.sum()
    return {
        "miou": miou_from_confusion(cm),
        "pixel_acc": float(np.diag(cm).sum() / total) if total else float("nan"),
    }


def predict_at_label_size(predictor: Predictor, images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """trainIds predicted on ``images``, resized (nearest) to the labels' ``size`` when they differ:
    a synthetic image may be smaller than its labels, which are never resized."""
    pred = np.asarray(predictor.predict(images)).astype(np.uint8)
    if pred.shape[1:] == tuple(size):
        return pred
    return np.stack([cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for p in pred])


def segmenter_alignment(predictor: Predictor, images: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """``alignment`` of ``predictor``'s trainIds on uint8 ``images`` against trainIds ``gt``."""
    return alignment(predict_at_label_size(predictor, images, gt.shape[1:]), gt)


class TransformersSegmenter:
    """A ``transformers`` semantic-segmentation model (local folder) predicting the 19 trainIds.

    Preprocessing (resize, mean/std) is read from the folder's ``preprocessor_config.json``
    and done here in torch (no image-processor class, which may need torchvision); the logits
    are upsampled bilinearly to the image size before the argmax.
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu", batch_size: int = 8):
        from transformers import AutoModelForSemanticSegmentation

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: no segmentation model here (config.json missing); fix: a folder written by "
                "save_pretrained, e.g. a Cityscapes SegFormer"
            )
        self.model = AutoModelForSemanticSegmentation.from_pretrained(folder).to(device).eval()
        n = int(self.model.config.num_labels)
        if n != NUM_CLASSES:
            raise ValueError(
                f"{folder}: the model predicts {n} classes, not the {NUM_CLASSES} Cityscapes trainIds "
                "(fix: a model fine-tuned on Cityscapes)"
            )
        pre = folder / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = torch.tensor(cfg.get("image_mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        size = cfg.get("size") or {}
        self.size = (int(size["height"]), int(size["width"])) if "height" in size else None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.folder = folder

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size]))
            x = x.permute(0, 3, 1, 2).float() / 255.0
            hw = x.shape[-2:]
            if self.size is not None:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            x = ((x - self.mean) / self.std).to(self.device)
            logits = self.model(pixel_values=x).logits.float()
            logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
            out.append(logits.argmax(1).to(torch.uint8).cpu())
        return torch.cat(out).numpy()


__all__ = [
    "Predictor",
    "TransformersSegmenter",
    "alignment",
    "confusion",
    "miou",
    "miou_from_confusion",
    "pixel_accuracy",
    "predict_at_label_size",
    "segmenter_alignment",
]
