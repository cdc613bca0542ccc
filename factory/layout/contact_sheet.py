"""Contact sheet: image | neural layout (first 3 components) | Canny | GT semseg colours, per row.

A quick look that the layout describes the scene: objects and regions the labels show should
appear as distinct colours in the layout column, without the layout ever seeing a label.

    python -m factory.layout.contact_sheet --city outputs/city --out outputs/contact_sheet.png

``--city`` is a procedural city (``python -m factory.data.procedural --out DIR``) or any
Cityscapes root. Without ``--pca`` a PCA is fitted on the fly on the train split with the
chosen model (default ``tiny``: random weights, so the structure comes from the architecture).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from factory.cli import STARTS_OVER, run_cli
from factory.conditions import CannyCondition, SemsegCondition
from factory.data.cityscapes import list_cityscapes, load_sample
from factory.layout.neural import LayoutConfig, NeuralLayout, build_backbone, fit_layout_pca, layout_to_rgb
from factory.layout.pca import PCAArtifact
from factory.viz import save_grid

COLUMNS = ("image", "neural layout (PCA 1-3)", "Canny", "GT semseg")


def cityscapes_root(path: Path) -> Path:
    """Accept the procedural city's output folder (with cityscapes/ inside) or a Cityscapes root."""
    return path / "cityscapes" if (path / "cityscapes" / "leftImg8bit").is_dir() else path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--city", type=Path, required=True, help="procedural city folder or Cityscapes root")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--split", default="val", help="split whose images are shown (default val)")
    parser.add_argument("--n", type=int, default=4, help="number of rows (images)")
    parser.add_argument("--model", default="tiny", help="model reference (tiny, sd15-arch, hub id, folder)")
    parser.add_argument("--pca", type=Path, default=None, help="fitted PCA artifact; default: fit on train")
    parser.add_argument("--n-components", type=int, default=20)
    parser.add_argument("--resolution", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of each tile")
    args = parser.parse_args(argv)

    root = cityscapes_root(args.city)
    cfg = LayoutConfig(
        model=args.model,
        n_components=args.n_components,
        resolution=tuple(args.resolution) if args.resolution else None,
        pca=args.pca,
        device=args.device,
    )
    backbone = build_backbone(cfg)
    if args.pca is not None:
        pca = PCAArtifact.load(args.pca)
    else:
        train = [load_sample(r) for r in list_cityscapes(root, "train").refs]
        pca = fit_layout_pca(backbone, train, cfg)
    layout = NeuralLayout(backbone, pca, cfg.resolution)

    shown = [load_sample(r) for r in list_cityscapes(root, args.split).refs[: args.n]]
    if not shown:
        raise SystemExit(f"{root}: no {args.split} images found")
    size = layout.pixel_size(shown)
    images = [cv2.resize(s.image, (size[1], size[0]), interpolation=cv2.INTER_AREA) for s in shown]
    layout_rgb = list(layout_to_rgb(layout(shown)))
    canny = [
        (t.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in CannyCondition(resolution=size)(shown)
    ]
    semseg = [(t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for t in SemsegCondition(size)(shown)]
    rows = [list(tiles) for tiles in zip(images, layout_rgb, canny, semseg, strict=True)]
    # 2-pixel gaps, no outer margin, tiles upscaled without blurring the label colours
    save_grid(
        rows, args.out, col_labels=COLUMNS, pad=2, margin=0, scale=args.scale, interpolation=cv2.INTER_NEAREST
    )
    print(
        f"wrote {args.out} ({len(shown)} rows: image | layout RGB | Canny | semseg) with PCA of {pca.meta.get('sample_count')} vectors"
    )
    return args.out


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
