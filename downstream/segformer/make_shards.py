"""Write Cityscapes references into shards of the factory's schema (real data, no synthesis).

Real references in shards let downstream read one format, and give the benchmark a stand-in
for synthetic shards before any are generated (``--downscale 2`` also exercises the
image-smaller-than-labels path). Placeholder shards are NOT synthetic data: results trained on
them say nothing about LUMEN.

    python -m downstream.segformer.make_shards --cityscapes data/procedural/cityscapes --out out/ref_shards
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from factory.cli import STARTS_OVER, run_cli
from factory.data.sample import DataError, check_key
from factory.shards.writer import ShardWriter


def write_reference_shards(
    cityscapes_root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    per_shard: int = 64,
    downscale: int = 1,
    variant: str = "ref",
) -> list[Path]:
    """Each ``leftImg8bit/<split>`` image with its gtFine labelIds/instanceIds -> ``out/ref-NNNNNN.tar``."""
    root = Path(cityscapes_root)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(
            root / "leftImg8bit" / split,
            "no Cityscapes images found",
            "point --cityscapes at a Cityscapes root",
        )
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {downscale}")
    out = Path(out)
    paths: list[Path] = []
    writer: ShardWriter | None = None
    for i, img_path in enumerate(tqdm(images, desc="reference shards", unit="img")):
        if i % per_shard == 0:
            if writer is not None:
                writer.close()
            paths.append(out / f"ref-{len(paths):06d}.tar")
            writer = ShardWriter(paths[-1])
        stem = check_key(img_path.name[: -len("_leftImg8bit.png")])
        gt = root / "gtFine" / split / img_path.parent.name
        bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(img_path, "image does not decode", "restore the file")
        h, w = bgr.shape[:2]
        if downscale > 1:
            bgr = cv2.resize(bgr, (w // downscale, h // downscale), interpolation=cv2.INTER_AREA)
        labels = {
            "labelids.png": gt / f"{stem}_gtFine_labelIds.png",
            "instanceids.png": gt / f"{stem}_gtFine_instanceIds.png",
        }
        labels = {k: v for k, v in labels.items() if v.is_file()}
        meta = {
            "source_key": stem,
            "variant": variant,
            "condition_type": "none (real reference)",
            "image_size": list(bgr.shape[:2]),
            "label_size": [h, w],
        }
        assert writer is not None  # opened at i == 0
        writer.add(stem, bgr[:, :, ::-1].copy(), labels, meta)
    if writer is not None:
        writer.close()
    return paths


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(
        prog="python -m downstream.segformer.make_shards", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--cityscapes", required=True, type=Path, help="Cityscapes root (leftImg8bit/, gtFine/)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--split", default="train")
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument(
        "--downscale", type=int, default=1, help="store images this many times smaller than labels"
    )
    a = p.parse_args(argv)
    paths = write_reference_shards(
        a.cityscapes, a.out, split=a.split, per_shard=a.per_shard, downscale=a.downscale
    )
    print(f"wrote {len(paths)} shard(s) to {a.out}")
    return paths


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
