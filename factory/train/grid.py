"""Image grids for validation and previews (PNG), and a viewable picture of any condition tensor.

Why: a training run must leave evidence a person can open: reference | condition | samples, one
row per reference. Conditions have any channel count (1 for Canny, 20 for a neural layout), so
they are shown as the first three channels, each min-max normalised.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from factory.atomic import atomic_write_bytes


def condition_to_rgb(cond: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,H,W) float condition -> (H,W,3) uint8: channels 0..2, each min-max normalised."""
    c = (
        cond.detach().float().cpu().numpy()
        if isinstance(cond, torch.Tensor)
        else np.asarray(cond, np.float32)
    )
    if c.ndim != 3:
        raise ValueError(f"condition must be (C,H,W), got shape {c.shape}")
    c = c[:3] if c.shape[0] >= 3 else np.repeat(c[:1], 3, axis=0)
    lo = c.reshape(3, -1).min(1)[:, None, None]
    hi = c.reshape(3, -1).max(1)[:, None, None]
    c = (c - lo) / np.maximum(hi - lo, 1e-6)
    return (c.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def save_grid(
    rows: list[list[np.ndarray]], path: str | Path, row_labels: list[str] | None = None, pad: int = 2
) -> Path:
    """Tile uint8 HxWx3 images (all the same size) row by row, white padding; write PNG atomically."""
    if not rows or not rows[0]:
        raise ValueError("save_grid needs at least one image")
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    label_w = 0 if not row_labels else 8 * max(len(s) for s in row_labels) + 6
    canvas = np.full((len(rows) * (h + pad) + pad, label_w + ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        if row_labels:
            cv2.putText(canvas, row_labels[i], (3, y + h // 2 + 4), cv2.FONT_HERSHEY_PLAIN, 0.9, (0, 0, 0), 1)
        for j, img in enumerate(row):
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            x = label_w + pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write_bytes(path, buf.tobytes())
    return path
