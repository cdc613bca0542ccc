"""What the benchmarks share: per-run folders, mean +- std over seeds, and writing a result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def run_dir(out: Path, mix: str, seed: int) -> Path:
    """The work folder of one training run: ``out/<mix>/seed<seed>`` ("real + LUMEN" -> "real+LUMEN")."""
    return out / mix.replace(" + ", "+").replace(" ", "_") / f"seed{seed}"


def summarise(
    runs: dict[str, list[dict[str, float]]], columns: tuple[str, ...] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Per mix and column: mean and sample std (0 for a single seed) over seeds. ``columns``
    defaults to the keys of the runs' rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mix, rows in runs.items():
        out[mix] = {}
        for c in columns if columns is not None else tuple(rows[0]):
            v = np.array([r[c] for r in rows], dtype=np.float64)
            out[mix][c] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "n": len(v),
            }
    return out


def save_result(
    out: Path, stem: str, result: dict[str, Any], plot: Callable[[dict, Path], None]
) -> dict[str, Any]:
    """``out/<stem>.json`` and the plot of ``result["summary"]`` as ``out/<stem>.png``."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result["summary"], out / f"{stem}.png")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
    return result
