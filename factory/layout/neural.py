"""The neural layout: backbone features -> PCA -> N unit-variance channels (NEURAL_LAYOUT.md).

``NeuralLayout`` joins a backbone and a fitted ``PCAArtifact`` (refusing a PCA fitted on other
features). Layouts are stored as float16 at the feature grid (H/16 x W/16 for SD) by
``compute_stored`` and upsampled bilinearly to pixel size by ``upsample_stored`` - the tensor the
ControlNet takes as its conditioning image. ``fit_layout_pca`` fits the PCA in-process; the Ray
job uses the same pieces (``sample_counts``, ``batch_vectors``, ``fit_pca``) across actors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from factory.config import check
from factory.data.sample import DataError, Sample
from factory.layout.backbones import (
    Backbone,
    ClipBackbone,
    DinoBackbone,
    Dinov2Backbone,
    LayoutError,
    RandomUNetBackbone,
    SDUNetBackbone,
    VAELatentBackbone,
    ViTPatchBackbone,
)
from factory.layout.pca import PCAArtifact, draw_vectors, fit_pca, sample_counts
from factory.models import SDComponents, load_components

# The patch-token backbones by ``layout.backbone``; each reads its model folder from the field of
# the same name (``vit_folder``).
VIT_BACKBONES: dict[str, type[ViTPatchBackbone]] = {
    "dinov2": Dinov2Backbone,
    "dino": DinoBackbone,
    "clip": ClipBackbone,
}


@dataclass
class LayoutConfig:
    """How layouts are computed. Every field that changes the features is in the PCA signature."""

    model: str = "tiny"  # model reference (factory.models): tiny, sd15-arch, hub id, local folder
    # sd-unet: the paper's layout (NEURAL_LAYOUT.md); dinov2, dino, clip: Table 1's alternatives
    # (patch tokens; folder fields below); vae-latent and sd-unet-random: the offline ablation
    # rows (the model's VAE latent alone; the sd-unet hooks on a randomly re-initialised U-Net)
    backbone: Literal["sd-unet", "dinov2", "dino", "clip", "vae-latent", "sd-unet-random"] = "sd-unet"
    dinov2: Path | None = None  # local Dinov2Model folder when backbone == "dinov2"
    dino: Path | None = None  # local DINO ViTModel folder (e.g. facebook/dino-vitb16) when backbone == "dino"
    clip: Path | None = None  # local CLIP(Vision)Model folder (e.g. openai/clip-vit-base-patch16)
    random_init_seed: int = 0  # seed of the random U-Net weights when backbone == "sd-unet-random"
    layers: tuple[int, ...] = (2, 5, 8)  # decoder positions: hidden states entering these layers
    timestep: int = 100
    noise_seed: int = 42
    prompt: str = ""
    early_stop: bool = True
    n_components: int = 20
    pca_samples: int = 40000  # feature vectors drawn across the training set to fit the PCA
    sample_seed: int = 0  # which vectors are drawn
    resolution: tuple[int, int] | None = None  # (H, W) images are resized to; None = as read
    pca: Path | None = None  # fitted artifact: its two files are pca.pca_files(pca)
    # layouts stored by factory.jobs.extract_layouts (its out folder): references found there are
    # read, not computed (ControlNet training, generation); the rest are computed
    store: Path | None = None
    device: str = "auto"
    batch_size: int = 8  # images per call (the Ray job's batch)
    micro_batch: int = 4  # fixed forward batch: layouts identical across batch compositions
    # torch.compile the VAE encoder and the truncated U-Net (GPU; bf16-level differences, so a PCA
    # and the layouts it is applied to should be computed with the same setting)
    compile: bool = False
    channels_last: bool = False  # NHWC weights/activations (GPU convolutions; see docs/benchmarks.md)

    def __post_init__(self) -> None:
        check(len(self.layers) > 0, "layers", "give at least one decoder layer position, e.g. [2, 5, 8]")
        check(
            list(self.layers) == sorted(set(self.layers)),
            "layers",
            f"{list(self.layers)} must increase strictly",
        )
        check(0 <= self.timestep < 1000, "timestep", f"{self.timestep} must be in 0..999")
        check(1 <= self.n_components <= 4096, "n_components", f"{self.n_components} must be in 1..4096")
        check(self.pca_samples >= 2, "pca_samples", f"{self.pca_samples} must be >= 2")
        check(self.batch_size >= 1, "batch_size", f"{self.batch_size} must be >= 1")
        check(self.micro_batch >= 1, "micro_batch", f"{self.micro_batch} must be >= 1")
        if self.resolution is not None:
            check(
                len(self.resolution) == 2 and min(self.resolution) > 0,
                "resolution",
                f"{self.resolution} must be [height, width] with positive sides",
            )
        check(self.random_init_seed >= 0, "random_init_seed", f"{self.random_init_seed} must be >= 0")
        if self.backbone in VIT_BACKBONES:
            cls = VIT_BACKBONES[self.backbone]
            check(
                vit_folder(self) is not None,
                self.backbone,
                f"backbone {self.backbone!r} needs {self.backbone}: <local {cls.model_class} folder> "
                f"(e.g. `hf download {cls.hub_example} --local-dir <folder>`)",
            )


def check_layout_artifacts(cfg: LayoutConfig, *, need_pca: bool = True) -> None:
    """Fail fast on the driver (nothing heavy loaded): the backbone's model exists, the PCA
    artifact loads and validates, the layout store is a folder. Raises with the file named."""
    from factory.models import check_model_ref

    if cfg.backbone in VIT_BACKBONES:
        VIT_BACKBONES[cfg.backbone].check_folder(vit_folder(cfg), field=f"layout.{cfg.backbone}")
    else:
        check_model_ref(cfg.model)
    if need_pca and cfg.pca is not None:
        PCAArtifact.load(cfg.pca)
    if cfg.store is not None and not Path(cfg.store).is_dir():
        raise LayoutError(
            f"layout.store: {cfg.store} is not a folder (fix: the output folder of "
            "`python -m factory.jobs.extract_layouts`, or null to compute layouts on the fly)"
        )


def vit_folder(cfg: LayoutConfig) -> Path | None:
    """The model folder of the configured ViT backbone: the field named like it (None for others)."""
    return {"dinov2": cfg.dinov2, "dino": cfg.dino, "clip": cfg.clip}.get(cfg.backbone)


def build_backbone(cfg: LayoutConfig, components: SDComponents | None = None) -> Backbone:
    """The configured backbone; ``components`` reuses already-loaded SD components."""
    if cfg.backbone in VIT_BACKBONES:
        cls = VIT_BACKBONES[cfg.backbone]
        folder = cls.check_folder(vit_folder(cfg), field=f"layout.{cfg.backbone}")
        return cls(folder, device=cfg.device, micro_batch=cfg.micro_batch)
    if components is None:
        components = load_components(cfg.model, device=cfg.device)
    if cfg.backbone == "vae-latent":
        return VAELatentBackbone(
            components, micro_batch=cfg.micro_batch, compile=cfg.compile, channels_last=cfg.channels_last
        )
    unet_options: dict[str, Any] = {
        "timestep": cfg.timestep,
        "noise_seed": cfg.noise_seed,
        "prompt": cfg.prompt,
        "early_stop": cfg.early_stop,
        "micro_batch": cfg.micro_batch,
        "compile": cfg.compile,
        "channels_last": cfg.channels_last,
    }
    if cfg.backbone == "sd-unet-random":
        return RandomUNetBackbone(
            components, cfg.layers, random_init_seed=cfg.random_init_seed, **unet_options
        )
    return SDUNetBackbone(components, cfg.layers, **unet_options)


def pca_components(cfg: LayoutConfig, backbone: Backbone) -> int:
    """``cfg.n_components``, checked against the backbone's channels before a PCA is fitted.

    A PCA keeps at most one component per feature channel, and ``vae-latent`` has only the
    VAE's latent channels (4 for SD). Keeping fewer than configured would silently narrow the
    ControlNet's conditioning, so more than the channels is an error naming both numbers.
    """
    if cfg.n_components > backbone.channels:
        raise LayoutError(
            f"layout.n_components {cfg.n_components} exceeds the {backbone.channels} feature channels of "
            f"the {backbone.name!r} backbone (a PCA keeps at most one component per channel); fix: set "
            f"layout.n_components <= {backbone.channels}"
        )
    return cfg.n_components


# --------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit RGB image (H, W, 3) from disk; DataError if it is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file does not exist", "check the dataset root and split")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(path, "cannot be decoded as an image", "re-export or remove the file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _image_of(item: Sample | np.ndarray, i: int) -> tuple[np.ndarray, str]:
    if isinstance(item, Sample):
        img, where = item.image, item.paths.get("image", item.key)
    else:
        img, where = item, f"image #{i}"
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise DataError(
            where,
            f"expected an 8-bit RGB array (H, W, 3), got {type(img).__name__} {shape}",
            "decode images with factory.data.load_sample or read_image",
        )
    return img, str(where)


def resize_image(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize (H, W, 3) uint8 to ``size`` = (H, W): area averaging down, bilinear up."""
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    h, w = size
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def images_to_tensor(
    items: Sequence[Sample | np.ndarray],
    resolution: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1] from Samples or uint8 arrays, resized to ``resolution``.

    The batch travels to ``device`` as uint8 and is converted there: a quarter of the bytes, and
    on a GPU the conversion is free while on the CPU it cost ~15% of layout extraction.
    """
    if len(items) == 0:
        raise LayoutError("got an empty batch of images")
    arrays = [resize_image(_image_of(x, i)[0], resolution) for i, x in enumerate(items)]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise LayoutError(f"images in one batch differ in size {sorted(sizes)}; fix: set layout.resolution")
    x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def keys_of(items: Sequence[Sample | np.ndarray]) -> list[str]:
    return [x.key if isinstance(x, Sample) else f"image{i}" for i, x in enumerate(items)]


# --------------------------------------------------------------------------- PCA fitting


def batch_features(backbone: Backbone, items: Sequence[Sample | np.ndarray], resolution=None) -> torch.Tensor:
    """Backbone features (B, C, h, w) float32 for a batch of Samples (for the Ray job and tests)."""
    device = getattr(backbone, "device", torch.device("cpu"))
    return backbone(images_to_tensor(items, resolution, device))


def batch_vectors(
    backbone: Backbone,
    samples: Sequence[Sample],
    counts: dict[str, int],
    seed: int,
    resolution: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The PCA sample vectors {key: (n_key, C)} of a batch: positions depend on (seed, key) only."""
    feats = batch_features(backbone, samples, resolution)
    return draw_vectors(feats, [s.key for s in samples], counts, seed)


def pca_meta(backbone: Backbone, cfg: LayoutConfig, **extra: Any) -> dict[str, Any]:
    """The metadata recorded in a PCA artifact fitted with ``backbone`` under ``cfg``."""
    meta = {
        "signature": backbone.signature(),
        "resolution": list(cfg.resolution) if cfg.resolution else None,
        "requested_samples": cfg.pca_samples,
        "sample_seed": cfg.sample_seed,
    }
    meta.update(extra)
    return meta


def fit_layout_pca(backbone: Backbone, samples: Sequence[Sample], cfg: LayoutConfig) -> PCAArtifact:
    """Fit the layout PCA in-process on ``samples`` (a training set small enough to iterate here)."""
    n = pca_components(cfg, backbone)  # before any features are computed
    counts = sample_counts([s.key for s in samples], cfg.pca_samples, cfg.sample_seed)
    vectors: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(samples), cfg.batch_size), desc="PCA features", unit="batch"):
        batch = samples[start : start + cfg.batch_size]
        vectors.update(batch_vectors(backbone, batch, counts, cfg.sample_seed, cfg.resolution))
    return fit_pca(vectors, n, pca_meta(backbone, cfg))


# --------------------------------------------------------------------------- the layout


class NeuralLayout:
    """Backbone + fitted PCA -> neural layouts of image batches."""

    def __init__(self, backbone: Backbone, pca: PCAArtifact, resolution: tuple[int, int] | None = None):
        pca.check_compatible(backbone.signature(), f"the {backbone.name} backbone")
        self.backbone = backbone
        self.pca = pca
        # tuple(): a list from a config is accepted; it holds the (H, W) pair
        self.resolution = cast("tuple[int, int]", tuple(resolution)) if resolution else None

    @classmethod
    def from_config(cls, cfg: LayoutConfig, components: SDComponents | None = None) -> NeuralLayout:
        if cfg.pca is None:
            raise LayoutError("layout.pca is not set; fix: fit a PCA first and set layout.pca to its path")
        return cls(build_backbone(cfg, components), PCAArtifact.load(cfg.pca), cfg.resolution)

    @property
    def channels(self) -> int:
        return self.pca.n_components

    def signature(self) -> dict[str, Any]:
        return {
            **self.backbone.signature(),
            "n_components": self.pca.n_components,
            "pca_sample_count": self.pca.meta.get("sample_count"),
            "pca_hash": self.pca_hash,
            "resolution": list(self.resolution) if self.resolution else None,
        }

    @property
    def pca_hash(self) -> str:
        """A digest of the PCA's tensors: two artifacts that project differently never share it."""
        import hashlib

        h = hashlib.sha256()
        for t in (self.pca.mean, self.pca.components, self.pca.eigenvalues):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.inference_mode()
    def compute(self, items: Sequence[Sample | np.ndarray]) -> torch.Tensor:
        """Layouts (B, N, h, w) float32 at the feature grid."""
        return self.pca.apply(batch_features(self.backbone, items, self.resolution))

    def compute_stored(self, items: Sequence[Sample | np.ndarray]) -> torch.Tensor:
        """Layouts as stored in shards: (B, N, h, w) float16 on CPU."""
        return self.compute(items).to(device="cpu", dtype=torch.float16)

    @staticmethod
    def upsample_stored(stored: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Stored (B, N, h, w) layouts -> (B, N, H, W) float32 at pixel size (bilinear)."""
        if stored.ndim == 3:
            stored = stored[None]
        return F.interpolate(stored.float(), size=tuple(size), mode="bilinear", align_corners=False)

    def pixel_size(self, items: Sequence[Sample | np.ndarray]) -> tuple[int, int]:
        if self.resolution:
            return self.resolution
        img, _ = _image_of(items[0], 0)
        return int(img.shape[0]), int(img.shape[1])

    def __call__(self, items: Sequence[Sample | np.ndarray]) -> torch.Tensor:
        """Layouts at pixel resolution (B, N, H, W) float32: the ControlNet conditioning image.

        Always through the stored form (float16 at the feature grid), so a layout computed here
        is the one extraction stores and training or generation reads back (up to one float16
        rounding step: the backbone's last float32 bits depend on its batch and thread count).
        """
        return self.upsample_stored(self.compute_stored(items), self.pixel_size(items))


def layout_to_rgb(layout: torch.Tensor | np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """First 3 layout components as an 8-bit RGB image (per-channel 2nd-98th percentile stretch).

    Accepts (N, h, w) or (B, N, h, w); returns (h, w, 3) or (B, h, w, 3) uint8.
    """
    arr = (
        layout.detach().float().cpu().numpy()
        if isinstance(layout, torch.Tensor)
        else np.asarray(layout, np.float32)
    )
    if arr.ndim == 4:
        return np.stack([layout_to_rgb(a, low, high) for a in arr])
    if arr.ndim != 3:
        raise LayoutError(f"layout_to_rgb expects (N, h, w) or (B, N, h, w), got {arr.shape}")
    chans = [arr[min(i, arr.shape[0] - 1)] for i in range(3)]
    out = []
    for c in chans:
        lo, hi = np.percentile(c, [low, high])
        out.append(np.clip((c - lo) / max(hi - lo, 1e-8), 0, 1))
    return (np.stack(out, axis=-1) * 255 + 0.5).astype(np.uint8)
