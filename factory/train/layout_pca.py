"""Fit the neural-layout PCA for a base model on a training set, in-process (small datasets).

Why here: the LUMEN ControlNet needs a PCA fitted with the *same* base model it is trained
with; on the procedural city this is a one-minute CPU step, so it runs without Ray (the Ray
job factory.jobs.extract_layouts does the same at scale).

Usage::

    python -m factory.train.layout_pca --model outputs/base/procedural \\
        --data outputs/city/cityscapes --out outputs/layout/procedural_pca
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from factory.cli import STARTS_OVER, run_cli


def fit(
    model: str,
    data_root: Path,
    out: Path,
    *,
    split: str = "train",
    samples: int = 20000,
    limit: int = 0,
    layout: Mapping[str, Any] | None = None,
) -> Path:
    """Fit on the first ``limit`` (0: all) images of ``split``; returns the tensors file.

    ``layout``: further LayoutConfig fields (``backbone``, ``n_components``, ``device``, ...),
    validated like a config file's - the same values the ControlNet's ``condition.layout`` must
    then be given, since a PCA only applies to the features it was fitted on.
    """
    from factory.config import from_dict
    from factory.data.cityscapes import list_cityscapes, load_sample
    from factory.layout import LayoutConfig, build_backbone, fit_layout_pca
    from factory.models import load_components

    cfg = from_dict(LayoutConfig, {"model": model, "pca_samples": samples, "device": "cpu", **(layout or {})})
    components = load_components(model)
    refs = list_cityscapes(data_root, split).refs
    refs = refs[:limit] if limit else refs
    items = [load_sample(r, labels=False) for r in refs]
    artifact = fit_layout_pca(build_backbone(cfg, components), items, cfg)
    return artifact.save(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fit the neural-layout PCA in-process.")
    ap.add_argument("--model", required=True, help="model reference (base model folder, tiny, hub id)")
    ap.add_argument("--data", type=Path, required=True, help="Cityscapes-layout root")
    ap.add_argument(
        "--out",
        type=Path,
        required=True,
        help="artifact name (writes its .safetensors + .json: factory.layout.pca_files)",
    )
    ap.add_argument("--split", default="train")
    ap.add_argument("--samples", type=int, default=20000, help="feature vectors drawn for the PCA")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(fit(args.model, args.data, args.out, split=args.split, samples=args.samples, limit=args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
