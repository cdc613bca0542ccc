"""Alignment of one ControlNet's samples, with and without its condition (a thin wrapper).

Why it stays: ``factory.eval.compare`` is the full conditioning comparison (five columns, many
ControlNets); this is its one-column special case kept for its CLI and ``measure.json``. A small
segmenter (factory.quality.segmenter) predicts trainIds on each generated image and the mIoU
against the *reference* labels (``factory.eval.alignment``) says how much of the layout survived;
the same references are generated with the condition zeroed (what the ControlNet sees under
condition dropout), and the segmenter's mIoU on the real references is the ceiling. Samples are
made by the factory's own ``Synthesizer`` with the ControlNet's recorded recipe (DDIM).

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

import numpy as np
import torch

from factory.atomic import atomic_write_text
from factory.cli import STARTS_OVER, run_cli
from factory.data.sample import DataError, Sample
from factory.quality.segmenter import Segmenter, SegmenterConfig, labelids_to_trainids


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
    from factory.data.cityscapes import list_cityscapes, load_sample
    from factory.eval.alignment import segmenter_alignment
    from factory.synth import SynthConfig, Synthesizer, WorkItem
    from factory.synth.variants import Variant
    from factory.viz import condition_to_rgb, save_grid

    t0 = time.perf_counter()
    meta = json.loads((controlnet_dir / "lumen_training.json").read_text())
    synth = Synthesizer.from_config(
        SynthConfig(controlnet=str(controlnet_dir), steps=steps, guidance_scale=guidance, scheduler="ddim",
                    device="cpu", batch_size=8),
        seed=seed,
    )  # fmt: skip
    if Path(segmenter_path).with_suffix(".safetensors").is_file():
        seg = Segmenter.load(segmenter_path)
    else:
        seg = Segmenter.train_procedural(SegmenterConfig())
        seg.save(segmenter_path)

    refs = list_cityscapes(data_root, "val").refs[:n]
    samples = [load_sample(r) for r in refs]
    gts = np.stack([labelids_to_trainids(_labelids(s)) for s in samples])
    reals = np.stack([s.image for s in samples])
    assert synth.condition is not None, "a trained ControlNet folder records its condition"
    cond = synth.condition(samples).float()
    variant = Variant(name="measure", prompt=prompt)
    items = [WorkItem(r, variant, seed + i) for i, r in enumerate(refs)]
    gen = {}
    for name, c in (("layout", cond), ("zeroed", torch.zeros_like(cond))):
        outputs = synth(items, c)
        bad = [o.error for o in outputs if o.image is None]
        if bad:
            raise RuntimeError(f"{controlnet_dir}: {len(bad)} samples failed, e.g. {bad[0]}")
        gen[name] = np.stack([o.image for o in outputs if o.image is not None])
    results = {}
    for name, imgs in (("real_reference", reals), *gen.items()):
        scores = segmenter_alignment(seg, imgs, gts)
        results[name] = {k: round(v, 4) for k, v in scores.items()}
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
