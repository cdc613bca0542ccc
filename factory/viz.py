"""Pictures a person opens: image grids with optional headers, and a view of any condition tensor.

Why one module: every run leaves evidence as a grid of tiles (a training run's validation
samples, the base model's previews, the alignment measurement, the layout contact sheet, the
generation job's contact sheet, the multi-task predictions), and they differ only in spacing,
labels and how tiles are scaled. ``grid`` draws them all:

- tiles are uint8 HxWx3 RGB; every tile is resized to the first tile's size times ``scale``
  (``interpolation``: INTER_AREA by default, INTER_NEAREST keeps label maps crisp);
- ``pad`` pixels of background between tiles, ``margin`` around the whole grid (default: pad);
- optional ``col_labels`` (a header band above the columns; each cut to its column's width,
  ``fit_label``) and ``row_labels`` (a band to the left), drawn with ``cv2.putText``; rows may be
  shorter than the longest (background fill).

``save_grid`` writes the grid as a PNG atomically (factory.atomic).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from factory.atomic import atomic_write_bytes

FONT = cv2.FONT_HERSHEY_PLAIN
FONT_SCALE = 0.9
HEADER_HEIGHT = 16  # the column-label band, when there are column labels


def _label_width(labels: Sequence[str]) -> int:
    return 8 * max(len(s) for s in labels) + 6


def fit_label(text: str, width: int) -> str:
    """``text`` cut to fit ``width`` pixels in the header font, ending with ".." when cut: a
    header never runs into its neighbour's."""
    text = str(text)
    if cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0] <= width - 4:
        return text
    while len(text) > 1 and cv2.getTextSize(text + "..", FONT, FONT_SCALE, 1)[0][0] > width - 4:
        text = text[:-1]
    return text.rstrip() + ".."


def short_labels(texts: Sequence[str]) -> list[str]:
    """Texts without the words they all start with ("a city street scene in fog", "... at
    night" -> "in fog", "at night"): the column headers say what differs."""
    words = [str(s).split() for s in texts]
    if len(words) < 2:
        return [str(s) for s in texts]
    n = 0
    while all(len(w) > n + 1 for w in words) and len({w[n] for w in words}) == 1:
        n += 1
    return [" ".join(w[n:]) for w in words]


def grid(
    rows: Sequence[Sequence[np.ndarray]],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    *,
    pad: int = 2,
    margin: int | None = None,
    scale: int = 1,
    interpolation: int = cv2.INTER_AREA,
    background: int = 255,
) -> np.ndarray:
    """Tile uint8 HxWx3 images row by row into one HxWx3 uint8 picture (see module doc)."""
    if not rows or not rows[0]:
        raise ValueError("grid needs at least one image")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    margin = pad if margin is None else margin
    h0, w0 = rows[0][0].shape[:2]
    h, w = h0 * scale, w0 * scale
    ncol = max(len(r) for r in rows)
    label_w = _label_width(row_labels) if row_labels else 0
    header_h = HEADER_HEIGHT if col_labels else 0
    height = 2 * margin + header_h + len(rows) * h + (len(rows) - 1) * pad
    width = 2 * margin + label_w + ncol * w + (ncol - 1) * pad
    canvas = np.full((height, width, 3), background, np.uint8)
    x0, y0 = margin + label_w, margin + header_h
    for j, text in enumerate(col_labels or []):
        x = x0 + j * (w + pad)
        label = fit_label(text, w)
        cv2.putText(canvas, label, (x + 2, margin + HEADER_HEIGHT - 4), FONT, FONT_SCALE, (0, 0, 0), 1)
    for i, row in enumerate(rows):
        y = y0 + i * (h + pad)
        if row_labels:
            cv2.putText(canvas, str(row_labels[i]), (3, y + h // 2 + 4), FONT, FONT_SCALE, (0, 0, 0), 1)
        for j, img in enumerate(row):
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=interpolation)
            x = x0 + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    **kwargs,
) -> Path:
    """``grid(rows, col_labels, row_labels, **kwargs)`` written to ``path`` as a PNG, atomically."""
    path = Path(path)
    atomic_write_bytes(path, grid_png(rows, col_labels, row_labels, **kwargs))
    return path


def grid_png(
    rows: Sequence[Sequence[np.ndarray]],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    **kwargs,
) -> bytes:
    """``grid(rows, col_labels, row_labels, **kwargs)`` as PNG bytes (to put in any store)."""
    canvas = grid(rows, col_labels, row_labels, **kwargs)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode a {canvas.shape} grid as PNG")
    return buf.tobytes()


def condition_to_rgb(cond: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,H,W) float condition -> (H,W,3) uint8: channels 0..2, each min-max normalised.

    Conditions have any channel count (1 for Canny, 20 for a neural layout); a 1- or 2-channel
    one shows its first channel in grey.
    """
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


__all__ = ["condition_to_rgb", "grid", "grid_png", "save_grid"]
