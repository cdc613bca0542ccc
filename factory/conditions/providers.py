"""Conditioning images behind one interface: neural layout and the paper's baselines.

Every provider maps a batch of Samples to a float32 tensor (B, channels, H, W) at pixel
resolution, so ControlNet training and synthesis never special-case the condition type:

- ``layout``: the N-channel neural layout (factory.layout), upsampled bilinearly;
- ``canny``: OpenCV Canny edges (thresholds configurable), 3 channels in {0, 1};
- ``semseg``: the ground-truth Cityscapes colour map from labelIds, 3 channels in [0, 1];
- ``depth``: a transformers depth-estimation model from a local folder, min-max normalised
  per image (near = bright, as the model predicts relative inverse depth), 3 channels;
- ``disparity``: the reference's own disparity label, min-max normalised per image the same
  way (disparity is inverse depth; invalid pixels = 0 = far): exact geometry where ``depth``
  estimates it, the offline world's stand-in for a MiDaS depth map (no depth weights offline);
- ``hed``: HED soft edges from a local weights file (``HEDNet``), 3 channels in [0, 1].

The 3-channel baselines follow the ControlNet convention (an RGB-like conditioning image).
``semseg`` and ``disparity`` read labels (``needs_labels``); ``depth`` estimates depth from the
image alone (it never reads the reference's disparity), like the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from factory.conditions.base import ConditionError, ConditionProvider
from factory.conditions.hed import HEDNet, load_hed
from factory.config import check
from factory.data.sample import DataError, Sample
from factory.layout import LayoutConfig, NeuralLayout, resize_image
from factory.layout.store import LayoutStore
from factory.models import SDComponents, content_hash, resolve_device

ConditionKind = Literal["layout", "canny", "semseg", "depth", "disparity", "hed"]


@dataclass
class ConditionConfig:
    """Which conditioning image a ControlNet sees, and how it is computed."""

    kind: ConditionKind = "layout"
    resolution: tuple[int, int] | None = None  # (H, W) of the conditioning image; None = image size
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    canny_low: int = 100
    canny_high: int = 200
    depth_model: Path | None = None  # local transformers depth-estimation folder
    hed_weights: Path | None = None  # local HED weights (.safetensors or .pth state dict)
    device: str = "auto"

    def __post_init__(self) -> None:
        check(0 <= self.canny_low <= self.canny_high, "canny_low", "need 0 <= canny_low <= canny_high")
        check(self.canny_high <= 1000, "canny_high", f"{self.canny_high} is above 1000")
        if self.resolution is not None:
            check(
                len(self.resolution) == 2 and min(self.resolution) > 0,
                "resolution",
                f"{self.resolution} must be [height, width] with positive sides",
            )
        check(
            self.kind != "depth" or self.depth_model is not None,
            "depth_model",
            "kind 'depth' needs depth_model: <local transformers depth-estimation folder>",
        )
        check(
            self.kind != "hed" or self.hed_weights is not None,
            "hed_weights",
            "kind 'hed' needs hed_weights: <local HED weights file>",
        )
        check(
            self.kind != "layout" or self.layout.pca is not None,
            "layout.pca",
            "kind 'layout' needs layout.pca: <fitted PCA artifact> (fit it with factory.jobs.extract_layouts)",
        )
        check(
            self.resolution is None or self.layout.resolution in (None, self.resolution),
            "layout.resolution",
            f"{self.layout.resolution} differs from resolution {self.resolution}; set one of them",
        )

    @property
    def needs_labels(self) -> bool:
        """Whether this kind's provider reads decoded labels (its class says; nothing is built)."""
        return bool(PROVIDERS[self.kind].needs_labels)


def _target_size(samples: Sequence[Sample], resolution: tuple[int, int] | None) -> tuple[int, int]:
    if not samples:
        raise ConditionError("got an empty batch of samples")
    if resolution is not None:
        return int(resolution[0]), int(resolution[1])
    sizes = {s.size for s in samples}
    if len(sizes) > 1:
        raise ConditionError(
            f"samples in one batch differ in size {sorted(sizes)}; fix: set condition.resolution"
        )
    return sizes.pop()


def _to_tensor(maps: list[np.ndarray]) -> torch.Tensor:
    """HxW or HxWx3 float arrays in [0, 1] -> (B, 3, H, W) float32."""
    arr = np.stack([m if m.ndim == 3 else np.repeat(m[..., None], 3, axis=2) for m in maps])
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(0, 3, 1, 2).contiguous()


class LayoutCondition:
    """The neural layout as a condition (N channels, unit variance, bilinear to pixel size).

    With a ``store`` (layouts written by the extraction job), a sample whose key is stored is
    read, not computed; ``read`` / ``computed`` count which was which. Both paths give the same
    tensor up to one float16 rounding step: computed layouts go through the stored float16 form
    too (the backbone's last float32 bits depend on its batch and thread count).
    """

    kind = "layout"
    needs_labels = False

    def __init__(self, layout: NeuralLayout, store: LayoutStore | None = None):
        self.layout = layout
        self.channels = layout.channels
        self.store = store
        self.read = 0
        self.computed = 0
        if store is not None:
            store.check_signature(layout.signature(), "condition.layout.store")

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.layout.signature()}

    def stored(self, samples: Sequence[Sample]) -> torch.Tensor:
        """(B, N, h, w) float16 layouts at the feature grid: read where stored, else computed."""
        stored = [self.store is not None and s.key in self.store for s in samples]
        have = [i for i, is_stored in enumerate(stored) if is_stored]
        missing = [i for i, is_stored in enumerate(stored) if not is_stored]
        rows: dict[int, torch.Tensor] = {}
        if missing:
            computed = self.layout.compute_stored([samples[i] for i in missing])
            rows.update({i: computed[j] for j, i in enumerate(missing)})
        for i in have:
            rows[i] = self.store.get(samples[i].key)  # type: ignore[union-attr]
        self.read += len(have)
        self.computed += len(missing)
        return torch.stack([rows[i] for i in range(len(samples))])

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = self.layout.pixel_size(samples)
        return NeuralLayout.upsample_stored(self.stored(samples), size).cpu()


class CannyCondition:
    """OpenCV Canny edges on the grey image at the target resolution."""

    kind = "canny"
    channels = 3
    needs_labels = False

    def __init__(self, low: int = 100, high: int = 200, resolution: tuple[int, int] | None = None):
        self.low, self.high, self.resolution = int(low), int(high), resolution

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "resolution": self.resolution}

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = _target_size(samples, self.resolution)
        maps = []
        for s in samples:
            grey = cv2.cvtColor(resize_image(s.image, size), cv2.COLOR_RGB2GRAY)
            maps.append(cv2.Canny(grey, self.low, self.high).astype(np.float32) / 255.0)
        return _to_tensor(maps)


def _cityscapes_colours() -> tuple[np.ndarray, np.ndarray]:
    """(labelId -> RGB, trainId -> RGB) lookup tables from cityscapesscripts' label table."""
    from cityscapesscripts.helpers.labels import labels

    by_id = np.zeros((256, 3), np.uint8)
    by_train = np.zeros((256, 3), np.uint8)
    for lab in labels:
        if 0 <= lab.id < 256:
            by_id[lab.id] = lab.color
        if 0 <= lab.trainId < 255:
            by_train[lab.trainId] = lab.color
    return by_id, by_train


class SemsegCondition:
    """The ground-truth semantic map as its Cityscapes colour image (the paper's GT-label baseline)."""

    kind = "semseg"
    channels = 3
    needs_labels = True  # reads labelIds / labelTrainIds

    def __init__(self, resolution: tuple[int, int] | None = None):
        self.resolution = resolution
        self._by_id, self._by_train = _cityscapes_colours()

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "palette": "cityscapes", "resolution": self.resolution}

    def colour(self, sample: Sample) -> np.ndarray:
        """HxWx3 uint8 colour map of a sample's labelIds (or labelTrainIds when only those exist)."""
        if sample.semantic is not None:
            return self._by_id[sample.semantic]
        if sample.trainids is not None:
            return self._by_train[sample.trainids]
        raise DataError(
            sample.paths.get("labelids", sample.key),
            "has no semantic labels (labelIds or labelTrainIds)",
            "load the sample with labels=True, or use a label-free condition such as layout",
        )

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = _target_size(samples, self.resolution)
        maps = []
        for s in samples:
            col = self.colour(s)
            if col.shape[:2] != size:
                col = cv2.resize(col, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            maps.append(col.astype(np.float32) / 255.0)
        return _to_tensor(maps)


def _normalise_per_image(depth: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> min-max per image to [0, 1]; a constant map (no depth cue at all) becomes 0."""
    lo = depth.amin(dim=(2, 3), keepdim=True)
    hi = depth.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (depth - lo) / (hi - lo).clamp_min(torch.finfo(depth.dtype).tiny), 0.0)


class DisparityCondition:
    """The reference's disparity label as a depth image (near = bright), like ``DepthCondition``'s.

    Cityscapes encoding: p = d * 256 + 1, 0 = invalid; d = (p - 1) / 256 px is proportional to
    inverse depth, so min-max normalising it gives what a relative depth model predicts, with
    the true geometry. Invalid pixels (sky, beyond stereo range) are 0, i.e. far.
    """

    kind = "disparity"
    channels = 3
    needs_labels = True  # reads the disparity label

    def __init__(self, resolution: tuple[int, int] | None = None):
        self.resolution = resolution

    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "encoding": "cityscapes disparity, min-max per image",
            "resolution": self.resolution,
        }

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = _target_size(samples, self.resolution)
        maps = []
        for s in samples:
            if s.disparity is None:
                raise DataError(
                    s.paths.get("disparity", s.key),
                    "has no disparity label",
                    "load the sample with labels=True from a dataset with disparity/, or use kind 'depth'",
                )
            p = s.disparity.astype(np.float32)
            d: np.ndarray = np.where(p > 1, (p - 1.0) / 256.0, 0.0).astype(np.float32)
            if d.shape != size:
                d = cv2.resize(d, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            maps.append(d)
        depth = torch.from_numpy(np.stack(maps))[:, None]
        return _normalise_per_image(depth).expand(-1, 3, -1, -1).contiguous()


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthCondition:
    """Monocular depth from a transformers depth-estimation model (e.g. Depth Anything, DPT)."""

    kind = "depth"
    channels = 3
    needs_labels = False  # monocular: from the image, not the reference's disparity

    def __init__(
        self, model_dir: str | Path, *, device: str = "auto", resolution: tuple[int, int] | None = None
    ):
        from transformers import AutoModelForDepthEstimation

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ConditionError(
                f"{model_dir}: no depth model here (config.json missing); fix: point depth_model to a "
                "folder written by save_pretrained, e.g. a downloaded depth-anything/Depth-Anything-V2-Small-hf"
            )
        self.model_dir = model_dir
        self.resolution = resolution
        self.device = resolve_device(device)
        self.model = AutoModelForDepthEstimation.from_pretrained(model_dir).to(self.device).eval()
        self.hash = content_hash(self.model)
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        pre = model_dir / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # the model's input must be a multiple of its patch size (ViT backbones) or 32 (conv ones)
        self.multiple = int(getattr(self.model.config, "patch_size", None) or 32)

    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": str(self.model_dir),
            "content_hash": self.hash,
            "resolution": self.resolution,
        }

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> torch.Tensor:
        """The model's raw ``predicted_depth`` (B, 1, H, W) float32 on uint8 images (B, H, W, 3),
        bilinear to the images' size: relative inverse depth for relative models (Depth Anything,
        DPT), metres for metric ones. factory.eval.depth scores it; ``__call__`` normalises it."""
        size = images.shape[1:3]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        mh = max(self.multiple, round(size[0] / self.multiple) * self.multiple)
        mw = max(self.multiple, round(size[1] / self.multiple) * self.multiple)
        x = F.interpolate(x, size=(mh, mw), mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.device)
        depth = self.model(pixel_values=x).predicted_depth.float()  # (B, h, w)
        return F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=False).cpu()

    @torch.inference_mode()
    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = _target_size(samples, self.resolution)
        depth = self.predict(np.stack([resize_image(s.image, size) for s in samples]))
        return _normalise_per_image(depth).expand(-1, 3, -1, -1).contiguous()


class HedCondition:
    """HED soft edges (``HEDNet``) from a local weights file."""

    kind = "hed"
    channels = 3
    needs_labels = False

    def __init__(
        self, weights: str | Path, *, device: str = "auto", resolution: tuple[int, int] | None = None
    ):
        self.weights = Path(weights)
        self.resolution = resolution
        self.device = resolve_device(device)
        self.net: HEDNet = load_hed(self.weights).to(self.device)
        self.hash = content_hash(self.net)

    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weights": str(self.weights),
            "content_hash": self.hash,
            "resolution": self.resolution,
        }

    @torch.inference_mode()
    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        size = _target_size(samples, self.resolution)
        x = torch.from_numpy(np.stack([resize_image(s.image, size) for s in samples])).permute(0, 3, 1, 2)
        edges = self.net(x.float().to(self.device))  # (B, 1, H, W) in [0, 1]
        return edges.expand(-1, 3, -1, -1).float().contiguous().cpu()


# kind -> provider class (for what a kind needs before its provider is built)
PROVIDERS: dict[str, type[ConditionProvider]] = {
    "layout": LayoutCondition,
    "canny": CannyCondition,
    "semseg": SemsegCondition,
    "depth": DepthCondition,
    "disparity": DisparityCondition,
    "hed": HedCondition,
}


def check_condition_artifacts(cfg: ConditionConfig) -> None:
    """Fail fast on the driver: every file or folder the condition names exists (and a layout's
    model and PCA load their config), before any worker loads models."""
    from factory.layout.neural import check_layout_artifacts

    if cfg.kind == "layout":
        check_layout_artifacts(cfg.layout)
    if cfg.kind == "depth" and not (Path(str(cfg.depth_model)) / "config.json").is_file():
        raise ConditionError(
            f"depth_model: {cfg.depth_model} is not a transformers depth-estimation folder "
            "(config.json missing); fix: save one with AutoModelForDepthEstimation.save_pretrained"
        )
    if cfg.kind == "hed" and not Path(str(cfg.hed_weights)).is_file():
        raise ConditionError(f"hed_weights: {cfg.hed_weights} does not exist (fix: the HED weights file)")


def build_condition(cfg: ConditionConfig, components: SDComponents | None = None) -> ConditionProvider:
    """The configured provider. ``components`` lets the layout reuse an already-loaded model."""
    # tuple(): a list set on the config directly is accepted; it holds the (H, W) pair
    res = cast("tuple[int, int]", tuple(cfg.resolution)) if cfg.resolution else None
    if cfg.kind == "layout":
        layout = NeuralLayout.from_config(cfg.layout, components)
        if res is not None:
            layout.resolution = res
        store = LayoutStore(cfg.layout.store) if cfg.layout.store is not None else None
        return LayoutCondition(layout, store)
    if cfg.kind == "canny":
        return CannyCondition(cfg.canny_low, cfg.canny_high, res)
    if cfg.kind == "semseg":
        return SemsegCondition(res)
    if cfg.kind == "depth":
        assert cfg.depth_model is not None  # ConditionConfig.__post_init__ requires it for "depth"
        return DepthCondition(cfg.depth_model, device=cfg.device, resolution=res)
    if cfg.kind == "disparity":
        return DisparityCondition(res)
    if cfg.kind == "hed":
        assert cfg.hed_weights is not None  # ConditionConfig.__post_init__ requires it for "hed"
        return HedCondition(cfg.hed_weights, device=cfg.device, resolution=res)
    raise ConditionError(f"unknown condition kind {cfg.kind!r}")
