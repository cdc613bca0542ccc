"""Depth: does a generated image keep the reference's geometry? (Table 2, SI error)

Why: the factory ships the reference's disparity and 3D boxes with every synthetic image, so the
image must show the same 3D scene. A depth estimator looks at the generated image and its depth
is compared with the reference's true depth (from its disparity and camera).

The measure is the scale-invariant log error of Eigen et al. (2014, eq. 4 with lambda = 1): with
d_i = log(pred_i) - log(gt_i) over the n valid pixels of one image,

    SI = (1/n) sum d_i^2 - ((1/n) sum d_i)^2,

the variance of the log ratio, which is 0 whenever pred = c * gt for any c > 0. It is reported as
**SILog = 100 * sqrt(SI)** per image, averaged over images - the convention of the KITTI depth
benchmark (Uhrig et al. 2017), which is how the error is usually quoted; lower is better. (We
could not check which of sqrt(SI), SI or 100 * sqrt(SI) the LUMEN paper prints; the JSON names
the convention.) Valid pixels: the reference's disparity is valid (sky and beyond stereo range
are not) and the prediction is positive and finite.

Instruments (``DepthEstimator``: uint8 images -> depth):

- real: ``TransformersDepth``, any ``transformers`` depth-estimation model in a local folder
  (DPT, Depth Anything, ...), through ``factory.conditions.DepthCondition``'s preprocessing.
  A *relative* model predicts inverse depth up to scale and shift: its output is first aligned
  per image to the true inverse depth by least squares (scale and shift, the MiDaS evaluation
  protocol), then inverted; a *metric* model's depth is used as is (SI ignores its scale anyway).
- offline: ``DepthJudge``, the judge segmenter's tiny U-Net with one output (log metres) trained
  in about a minute on rendered procedural scenes, supervised by depth from their disparity
  (``factory.data.cityscapes.disparity_to_depth``) - the labels the factory reuses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from factory.cli import STARTS_OVER, run_cli
from factory.config import check

SI_CONVENTION = (
    "SILog = 100 * sqrt(mean(d^2) - mean(d)^2), d = log pred - log gt (Eigen 2014, KITTI), per image"
)


def si_log_error(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """SILog of one image: 100 * sqrt(mean(d^2) - mean(d)^2), d = log(pred) - log(gt).

    ``valid`` (bool, same shape) restricts the pixels; pixels where gt or pred is not positive and
    finite are always left out. NaN when no pixel is valid.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    ok = np.isfinite(pred) & np.isfinite(gt) & (pred > 0) & (gt > 0)
    if valid is not None:
        ok &= valid
    if not ok.any():
        return float("nan")
    d = np.log(pred[ok]) - np.log(gt[ok])
    si = float(np.mean(d**2) - np.mean(d) ** 2)
    return 100.0 * float(np.sqrt(max(si, 0.0)))  # rounding can make a zero variance slightly negative


def si_log(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Mean SILog over images (images without a valid pixel are left out; NaN if all are)."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
    errors = [e for e in (si_log_error(p, g) for p, g in zip(preds, gts)) if not np.isnan(e)]
    return float(np.mean(errors)) if errors else float("nan")


def align_relative(inverse: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Depth from a relative inverse-depth map: least-squares scale and shift against the true
    inverse depth on the valid pixels (gt > 0), then 1 / x; non-positive results become NaN
    (left out by ``si_log_error``)."""
    inverse = np.asarray(inverse, np.float64)
    gt = np.asarray(gt, np.float64)
    ok = np.isfinite(inverse) & (gt > 0) & np.isfinite(gt)
    if ok.sum() < 2:
        return np.full(gt.shape, np.nan)
    a = np.stack([inverse[ok], np.ones(int(ok.sum()))], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, 1.0 / gt[ok], rcond=None)
    aligned = scale * inverse + shift
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(aligned > 0, 1.0 / aligned, np.nan)


def reference_depth(sample: Any) -> np.ndarray:
    """The reference's true depth in metres from its disparity and camera (0 = invalid)."""
    from factory.data.cityscapes import disparity_to_depth
    from factory.data.sample import DataError

    if sample.disparity is None or sample.camera is None:
        raise DataError(
            sample.paths.get("image", sample.key),
            "has no disparity or camera",
            "measure depth on a dataset with disparity/ and camera/ folders",
        )
    return disparity_to_depth(sample.disparity, sample.camera)


class DepthEstimator(Protocol):
    """uint8 RGB (B, H, W, 3) -> depth (B, H, W) float; ``relative``: inverse depth up to scale
    and shift (aligned to the truth before scoring) instead of depth."""

    relative: bool

    def predict(self, images: np.ndarray) -> np.ndarray: ...


def depth_error(estimator: DepthEstimator, images: np.ndarray, gts: Sequence[np.ndarray]) -> float:
    """Mean SILog of ``estimator`` on ``images`` against true depths ``gts`` (metres, 0 = invalid).

    The prediction is resized bilinearly to each label's size (a synthetic image may be smaller
    than its labels; the labels are never resized).
    """
    raw = estimator.predict(images)
    preds = []
    for p, g in zip(raw, gts):
        if p.shape != g.shape:
            p = F.interpolate(torch.from_numpy(np.asarray(p, np.float32))[None, None], size=g.shape,
                              mode="bilinear", align_corners=False)[0, 0].numpy()  # fmt: skip
        preds.append(align_relative(p, g) if estimator.relative else p)
    return si_log(preds, gts)


# ------------------------------------------------------------------------------------ real path


class TransformersDepth:
    """A ``transformers`` depth-estimation model from a local folder.

    ``output``: "metric" (depth in metres), "relative" (inverse depth up to scale and shift) or
    "auto": metric when the model's config says ``depth_estimation_type: metric`` (Depth
    Anything's metric checkpoints), else relative (DPT / MiDaS / Depth Anything relative).
    """

    def __init__(self, folder: str | Path, *, output: Literal["auto", "metric", "relative"] = "auto",
                 device: str = "cpu", batch_size: int = 8):  # fmt: skip
        from factory.conditions import DepthCondition

        self.model = DepthCondition(folder, device=device)
        if output == "auto":
            kind = getattr(self.model.model.config, "depth_estimation_type", "relative")
            output = "metric" if kind == "metric" else "relative"
        self.relative = output == "relative"
        self.batch_size = batch_size
        self.folder = Path(folder)

    def predict(self, images: np.ndarray) -> np.ndarray:
        chunks = [
            self.model.predict(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(chunks)[:, 0].numpy()


# --------------------------------------------------------------------------------- offline path


@dataclass
class DepthJudgeConfig:
    """Training recipe of the offline depth instrument (about 30 s on 2 CPU cores at 64x128; it then
    scores rendered val scenes at SILog ~25-30, and ~65-70 against another scene's depth)."""

    height: int = 64
    width: int = 128
    n_scenes: int = 128  # clear scenes rendered in memory
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-3
    width_mult: int = 8
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            check(v > 0 and v % 8 == 0, name, f"must be a positive multiple of 8, got {v}")
        for name in ("n_scenes", "steps", "batch_size"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.width_mult >= 4, "width_mult", f"must be >= 4, got {self.width_mult}")


def render_depth_set(cfg: DepthJudgeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clear procedural scenes rendered in memory: images (N, H, W, 3) and the depth their
    disparity label gives (N, H, W) metres, 0 = invalid."""
    from factory.data.cityscapes import disparity_to_depth
    from factory.data.procedural import render_scene

    rng = np.random.default_rng(cfg.seed)
    scenes = [render_scene(rng, cfg.height, cfg.width) for _ in range(cfg.n_scenes)]
    images = np.stack([s.image for s in scenes])
    depths = np.stack([disparity_to_depth(s.disparity, s.camera) for s in scenes])
    return images, depths


class DepthJudge:
    """The offline depth instrument: ``TinyUNet`` with one output channel, log depth in metres."""

    relative = False  # metric: the procedural camera is fixed, so absolute depth is learnable

    def __init__(self, model: torch.nn.Module, cfg: DepthJudgeConfig, meta: dict[str, Any] | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, images: np.ndarray, depths: np.ndarray, cfg: DepthJudgeConfig) -> DepthJudge:
        """Train on uint8 images (N, H, W, 3) and depths (N, H, W) metres (0 = invalid): L1 on log depth."""
        from factory.eval.instrument import one_cycle
        from factory.quality.segmenter import TinyUNet, augment, to_input

        if len(images) == 0 or images.shape[:3] != depths.shape:
            raise ValueError(f"images {images.shape} and depths {depths.shape} must be non-empty and aligned")
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        model = TinyUNet(cfg.width_mult, classes=1)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = one_cycle(opt, cfg.lr, cfg.steps)
        x_all = to_input(images)
        d_all = torch.from_numpy(depths.astype(np.float32))
        model.train()
        t0 = time.perf_counter()
        loss_v = float("nan")
        for _ in tqdm(range(cfg.steps), desc="depth judge", leave=False):
            idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
            x, d = x_all[idx].clone(), d_all[idx].clone()
            if cfg.augment:
                x, flip = augment(x, g)
                d[flip] = d[flip].flip(-1)
            valid = d > 0
            pred = model(x)[:, 0]
            loss = (pred[valid] - torch.log(d[valid])).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_v = float(loss.detach())
        meta = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": loss_v,
            "n_images": len(images),
        }
        return cls(model, cfg, meta)

    @classmethod
    def train_procedural(cls, cfg: DepthJudgeConfig | None = None) -> DepthJudge:
        """Render ``cfg.n_scenes`` clear procedural scenes in memory and train on them."""
        cfg = cfg or DepthJudgeConfig()
        judge = cls.fit(*render_depth_set(cfg), cfg)
        judge.meta["data"] = f"procedural render_scene x{cfg.n_scenes}, depth from disparity"
        return judge

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 RGB (B, H, W, 3) -> depth (B, H, W) float32 metres."""
        from factory.quality.segmenter import to_input

        x = to_input(images)
        out = [self.model(x[i : i + batch_size])[:, 0].exp() for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy()

    def save(self, path: str | Path) -> Path:
        from factory.eval.instrument import save_instrument

        return save_instrument(path, self.model, asdict(self.cfg), self.meta)

    @classmethod
    def load(cls, path: str | Path) -> DepthJudge:
        from factory.eval.instrument import load_instrument
        from factory.quality.segmenter import TinyUNet

        state, config, meta = load_instrument(path, "depth judge")
        cfg = DepthJudgeConfig(**config)
        model = TinyUNet(cfg.width_mult, classes=1)
        model.load_state_dict(state)
        return cls(model, cfg, meta)


def main(argv: list[str] | None = None) -> int:
    """Train the offline depth judge and save it (used by make demo's judge stage)."""
    from factory.eval.instrument import train_judge_cli

    return train_judge_cli(
        argv,
        prog="python -m factory.eval.depth",
        description="Train the offline depth judge (log depth from the rendered scenes' disparity) in memory; writes OUT.safetensors + OUT.json.",
        judge_cls=DepthJudge,
        config_cls=DepthJudgeConfig,
    )


__all__ = [
    "SI_CONVENTION",
    "DepthEstimator",
    "DepthJudge",
    "DepthJudgeConfig",
    "TransformersDepth",
    "align_relative",
    "depth_error",
    "reference_depth",
    "render_depth_set",
    "si_log",
    "si_log_error",
]


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
