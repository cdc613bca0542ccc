"""A small CPU semantic segmenter (Cityscapes trainIds) used as a *measuring instrument*.

Why it exists: "layout-conditioned samples follow the reference layout" must be measured, not
eyeballed. A segmenter trained on real (rendered) procedural scenes predicts trainIds on a
generated image; the mIoU against the reference's labels says how much of the scene layout
survived synthesis. The same instrument gives the label-consistency quality score and the demo's
segmentation overlays.

It is a tiny U-Net (about 0.1 M parameters) trained in about a minute on scenes rendered in
memory by ``factory.data.procedural``. Photometric augmentation (brightness, contrast, blur,
noise) keeps it from keying on the exact rendering, since generated images are blurrier and
colour-shifted. Saved as ``<path>.safetensors`` + ``<path>.json``.

API: ``Segmenter.train_procedural(cfg)``, ``Segmenter.fit(images, trainids, cfg)``,
``seg.predict(images_uint8) -> trainIds``, ``seg.save(path)``, ``Segmenter.load(path)``,
``miou(pred, gt)`` (from factory.eval.alignment).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from factory.cli import STARTS_OVER, run_cli
from factory.config import check, load_config
from factory.data.labels import IGNORE_INDEX, NUM_CLASSES, id_to_trainid

# the scores live with the other measures of generated images; re-exported for existing callers
from factory.eval.alignment import confusion, miou, miou_from_confusion, pixel_accuracy

IGNORE = IGNORE_INDEX  # trainId of void pixels


@dataclass
class SegmenterConfig:
    """Training recipe. The defaults train in about a minute on 2 idle CPU cores at 64x128."""

    height: int = 64
    width: int = 128
    n_scenes: int = 192  # scenes rendered in memory for training
    weathers: tuple[str, ...] = ("clear",)  # weathers rendered (clear = no weather)
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    width_mult: int = 12  # channels of the first stage
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self.height % 8 == 0 and self.height > 0,
            "height",
            f"must be a positive multiple of 8, got {self.height}",
        )
        check(
            self.width % 8 == 0 and self.width > 0,
            "width",
            f"must be a positive multiple of 8, got {self.width}",
        )
        check(self.n_scenes >= 1, "n_scenes", f"must be >= 1, got {self.n_scenes}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.width_mult >= 4, "width_mult", f"must be >= 4, got {self.width_mult}")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Three downsamplings (stride 8 at the bottom), skip connections, a 1x1 class head."""

    def __init__(self, width: int = 16, classes: int = NUM_CLASSES):
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w)])
        self.dec = nn.ModuleList([_block(8 * w, 2 * w), _block(4 * w, w), _block(2 * w, w)])
        self.head = nn.Conv2d(w, classes, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder stages' outputs (strides 1, 2, 4, 8): the judge's feature space for
        the realism and diversity measures (factory.eval)."""
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode(x)
        x = skips[-1]
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B,H,W,3) or (H,W,3) -> float (B,3,H,W) in [-1, 1]."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (B,H,W,3) or (H,W,3) RGB, got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Photometric jitter so that the instrument tolerates generated images (blur, colour shift).

    Returns the jittered batch and the mask of the samples it flipped horizontally.
    """
    b = x.shape[0]
    gain = 1.0 + 0.4 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    bias = 0.3 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    tint = 0.15 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    x = x * gain + bias + tint
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        x[blur] = F.avg_pool2d(x[blur], 3, stride=1, padding=1, count_include_pad=False)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    return x.clamp(-1.5, 1.5), flip


class Segmenter:
    """A trained TinyUNet plus the config it was trained with."""

    def __init__(self, model: TinyUNet, cfg: SegmenterConfig, meta: dict | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, images: np.ndarray, trainids: np.ndarray, cfg: SegmenterConfig) -> Segmenter:
        """Train on uint8 images (N,H,W,3) and trainIds (N,H,W) (255 = ignore)."""
        if len(images) == 0 or images.shape[:3] != trainids.shape:
            raise ValueError(
                f"images {images.shape} and trainids {trainids.shape} must be non-empty and aligned"
            )
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        model = TinyUNet(cfg.width_mult)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        x_all = to_input(images)
        y_all = torch.from_numpy(trainids.astype(np.int64))
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(range(cfg.steps), desc="segmenter", leave=False)
        loss_v = float("nan")
        for _ in bar:
            idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
            x, y = x_all[idx].clone(), y_all[idx].clone()
            if cfg.augment:
                x, flip = augment(x, g)
                y[flip] = y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_v = float(loss.detach())
            bar.set_postfix(loss=f"{loss_v:.3f}")
        meta = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": loss_v,
            "n_images": len(images),
        }
        return cls(model, cfg, meta)

    @classmethod
    def train_procedural(cls, cfg: SegmenterConfig | None = None) -> Segmenter:
        """Render ``cfg.n_scenes`` procedural scenes in memory and train on them."""
        cfg = cfg or SegmenterConfig()
        images, labels = render_training_set(cfg)
        seg = cls.fit(images, labels, cfg)
        seg.meta["data"] = f"procedural render_scene x{cfg.n_scenes}, weathers {list(cfg.weathers)}"
        return seg

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 RGB (B,H,W,3) or (H,W,3) -> trainIds uint8 (B,H,W) or (H,W)."""
        single = images.ndim == 3
        x = to_input(images)
        out = []
        for i in range(0, len(x), batch_size):
            out.append(self.model(x[i : i + batch_size]).argmax(1).to(torch.uint8))
        pred = torch.cat(out).numpy()
        return pred[0] if single else pred

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 16) -> list[torch.Tensor]:
        """The encoder stages' activations (float32, (B, C_l, H_l, W_l) per stage) on uint8 images."""
        x = to_input(images)
        chunks = [self.model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return [torch.cat([c[stage] for c in chunks]) for stage in range(len(chunks[0]))]

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json``; returns the safetensors path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = path.with_suffix(".safetensors")
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(weights))
        cfg = asdict(self.cfg)
        cfg["weathers"] = list(cfg["weathers"])
        path.with_suffix(".json").write_text(json.dumps({"config": cfg, "meta": self.meta}, indent=2))
        return weights

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        """Load a segmenter written by :meth:`save` (``path`` with or without a suffix)."""
        path = Path(path)
        weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for p in (weights, sidecar):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p}: segmenter file missing (fix: train one with Segmenter.train_procedural)"
                )
        info = json.loads(sidecar.read_text())
        cfg_d = dict(info["config"])
        # Sidecars written before the field was renamed store the weathers as "conditions".
        if "conditions" in cfg_d and "weathers" not in cfg_d:
            cfg_d["weathers"] = cfg_d.pop("conditions")
        cfg_d["weathers"] = tuple(cfg_d["weathers"])
        cfg = SegmenterConfig(**cfg_d)
        model = TinyUNet(cfg.width_mult)
        model.load_state_dict(load_file(str(weights)))
        return cls(model, cfg, info.get("meta"))


def render_training_set(cfg: SegmenterConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render procedural scenes (image, trainIds) in memory, cycling through ``cfg.weathers``."""
    from factory.data import procedural

    rng = np.random.default_rng(cfg.seed)
    images, labels = [], []
    for i in range(cfg.n_scenes):
        scene = procedural.render_scene(rng, cfg.height, cfg.width)
        image = scene.image
        weather = cfg.weathers[i % len(cfg.weathers)]
        if weather != "clear":
            image = procedural.apply_weather(
                image,
                scene.depth,
                weather,
                rng,
                ground=scene.ground,
                emissive=scene.emissive,
                lamps=scene.lamps,
            )
        images.append(image)
        labels.append(scene_trainids(scene))
    return np.stack(images), np.stack(labels)


def labelids_to_trainids(labelids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> trainIds (255 = ignore); factory.data.labels' cityscapesscripts table."""
    return id_to_trainid(labelids)


def scene_trainids(scene) -> np.ndarray:
    """trainIds of a rendered procedural scene (255 = ignore)."""
    return labelids_to_trainids(scene.labelids)


def main(argv: list[str] | None = None) -> int:
    """Train the alignment judge on rendered procedural scenes and save it (used by make demo)."""
    ap = argparse.ArgumentParser(
        prog="python -m factory.quality.segmenter",
        description="Train the small CPU segmenter that scores generated images (mIoU vs reused labels) "
        "on procedural scenes rendered in memory; writes OUT.safetensors + OUT.json.",
    )
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "overrides", nargs="*", help="SegmenterConfig key=value, e.g. steps=300 height=64 width=128"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(SegmenterConfig, None, args.overrides)
    seg = Segmenter.train_procedural(cfg)
    weights = seg.save(args.out)
    print(
        json.dumps({"out": str(weights), **{k: v for k, v in seg.meta.items() if k != "config"}}, default=str)
    )
    return 0


__all__ = [
    "IGNORE",
    "NUM_CLASSES",
    "Segmenter",
    "SegmenterConfig",
    "TinyUNet",
    "augment",
    "confusion",
    "labelids_to_trainids",
    "miou",
    "miou_from_confusion",
    "pixel_accuracy",
    "render_training_set",
    "to_input",
]


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
