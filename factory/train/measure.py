"""Measure whether layout-conditioned samples follow the reference layout (not eyeballed).

Why: "the samples follow the layout" is a claim about pixels, so it is scored: a small
segmenter trained on real procedural scenes (factory.quality.segmenter) predicts trainIds on
each generated image, and the mIoU against the *reference* labels says how much of the scene
layout survived synthesis. The same references are generated with the condition zeroed (what
the ControlNet sees under condition dropout): the gap between the two numbers is what the
condition contributes. The segmenter's mIoU on the real references is the ceiling.

Usage::

    python -m factory.train.measure --controlnet outputs/controlnet/procedural_layout \\
        --data outputs/city/cityscapes --out outputs/measure/procedural_layout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from factory.atomic import atomic_write_text
from factory.cli import STARTS_OVER, run_cli
from factory.config import from_dict
from factory.data.sample import DataError, Sample
from factory.quality.segmenter import (
    Segmenter,
    SegmenterConfig,
    confusion,
    labelids_to_trainids,
    miou_from_confusion,
)


def _labelids(sample: Sample) -> np.ndarray:
    if sample.semantic is None:
        raise DataError(sample.paths["image"], "has no gtFine labelIds", "measure on a split with labels")
    return sample.semantic


def measure(
    controlnet_dir: Path,
    data_root: Path,
    out: Path,
    *,
    segmenter_path: Path,
    n: int = 16,
    prompt: str = "a city street scene on a clear day",
    steps: int = 20,
    guidance: float = 3.0,
    seed: int = 0,
) -> dict:
    from diffusers import ControlNetModel

    from factory.conditions import ConditionConfig, build_condition
    from factory.data.cityscapes import list_cityscapes, load_sample
    from factory.models import load_components
    from factory.train.controlnet import controlnet_pipeline, sample_images
    from factory.viz import condition_to_rgb, save_grid

    t0 = time.perf_counter()
    meta = json.loads((controlnet_dir / "lumen_training.json").read_text())
    components = load_components(meta["base_model"]["ref"])
    cond_cfg = from_dict(ConditionConfig, meta["config"]["condition"])
    provider = build_condition(cond_cfg, components)
    controlnet = ControlNetModel.from_pretrained(controlnet_dir).eval()
    pipe = controlnet_pipeline(components, controlnet)
    pipe.set_progress_bar_config(disable=True)

    if Path(segmenter_path).with_suffix(".safetensors").is_file():
        seg = Segmenter.load(segmenter_path)
    else:
        seg = Segmenter.train_procedural(SegmenterConfig())
        seg.save(segmenter_path)

    refs = list_cityscapes(data_root, "val").refs[:n]
    samples = [load_sample(r) for r in refs]
    gts = np.stack([labelids_to_trainids(_labelids(s)) for s in samples])
    reals = np.stack([s.image for s in samples])
    cond = provider(samples).float()
    seeds = [seed + i for i in range(len(samples))]
    gen = {}
    for name, c in (("layout", cond), ("zeroed", torch.zeros_like(cond))):
        chunks = [
            sample_images(pipe, c[i : i + 8], prompt, seeds[i : i + 8], steps, guidance)
            for i in range(0, len(samples), 8)
        ]
        gen[name] = np.concatenate(chunks)
    results = {}
    for name, imgs in (("real_reference", reals), *gen.items()):
        pred = seg.predict(imgs)
        # a sum over the (non-empty) batch of confusion matrices is a matrix, never the start 0
        cm = cast(np.ndarray, sum(confusion(p, g) for p, g in zip(pred, gts)))
        results[name] = {
            "miou": round(miou_from_confusion(cm), 4),
            "pixel_acc": round(float(np.diag(cm).sum() / cm.sum()), 4),
        }
    rows = [
        [reals[i], condition_to_rgb(cond[i]), gen["layout"][i], gen["zeroed"][i]] for i in range(min(6, n))
    ]
    grid = save_grid(rows, out / "measure_grid.png")
    report = {
        "controlnet": str(controlnet_dir),
        "base_model": meta["base_model"],
        "condition": meta["condition"]["kind"],
        "train_steps": meta["steps"],
        "n_references": len(samples),
        "prompt": prompt,
        "sampler": {"scheduler": "DDIM", "steps": steps, "guidance": guidance},
        "segmenter": {"path": str(segmenter_path), **seg.meta},
        "scores": results,
        "grid": str(grid),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(out / "measure.json", json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score layout-conditioned samples with a segmenter (mIoU).")
    ap.add_argument(
        "--controlnet", type=Path, required=True, help="ControlNet folder (with lumen_training.json)"
    )
    ap.add_argument("--data", type=Path, required=True, help="Cityscapes-layout root; its val split is used")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--segmenter", type=Path, default=Path("outputs/segmenter/procedural"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = measure(
        args.controlnet,
        args.data,
        args.out,
        segmenter_path=args.segmenter,
        n=args.n,
        steps=args.steps,
        guidance=args.guidance,
    )
    print(json.dumps(report["scores"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
