"""Model references -> diffusers components, resolved in one place.

A model reference is a string:

- ``"tiny"``: a small SD-style model (VAE with latent stride 4, 3-level U-Net with cross-attention,
  2-layer CLIP text encoder, a BPE tokenizer built in memory) created from configs in code with a
  fixed seed. Tests use it, and the offline base model is trained from this architecture on CPU.
- ``"sd15-arch"``: the real Stable Diffusion 1.5 architecture with random weights, for shape checks
  and throughput benchmarks (no download; the tokenizer is the in-memory one, padded to 77 tokens).
- a local folder in diffusers' ``StableDiffusionPipeline`` layout (vae/, unet/, text_encoder/,
  tokenizer/, scheduler/), e.g. a trained offline base model or a downloaded SD checkpoint;
- a hub id (``owner/name``), loaded through ``from_pretrained``; ``HF_HUB_OFFLINE=1`` is respected
  and a missing checkpoint is a clear error, never a silent download attempt loop.

The noise scheduler returned is always a ``DDPMScheduler`` carrying the model's *training*
schedule: neural layouts noise latents with it (t = 100) and ControlNet training uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY = "tiny"
SD15_ARCH = "sd15-arch"
BUILTIN_REFS = (TINY, SD15_ARCH)

_ModuleT = TypeVar("_ModuleT", bound=torch.nn.Module)

# Seed used to initialise the built-in references: same ref -> same weights -> same content hash.
BUILTIN_SEED = 0

# Stable Diffusion's training noise schedule (also used for the tiny models).
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_PIPELINE_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


class ModelError(ValueError):
    """A model reference cannot be resolved. The message names the reference and the fix."""


@dataclass
class SDComponents:
    """The parts of a Stable-Diffusion-style model that every stage needs.

    ``content_hash`` identifies the weights (VAE, U-Net, text encoder, as loaded, before any
    dtype cast), so artifacts (PCA files, shards) can record exactly which model produced them.
    ``sample_size`` is the native image size in pixels (H, W).
    """

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    ref: str
    content_hash: str
    sample_size: tuple[int, int]

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD, 4 for ``tiny``)."""
        return vae_scale_factor(self.vae)


# --------------------------------------------------------------------------- device and dtype


def resolve_device(pref: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA device if any, else CPU; otherwise the named device (checked)."""
    if isinstance(pref, torch.device):
        return pref
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise ModelError(f"device {pref!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {pref!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
    return device


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it (fp16 otherwise); fp32 on CPU, where half precision is slow."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _move(module: _ModuleT, device: torch.device, dtype: torch.dtype) -> _ModuleT:
    """``module.to(device, dtype)``, casting only when needed (diffusers warns on every cast)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype)
    return module


def vae_scale_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config["block_out_channels"]) - 1)


# --------------------------------------------------------------------------- content hash


def content_hash(module: torch.nn.Module | dict[str, torch.Tensor], length: int = 16) -> str:
    """Stable short hex digest of a module's state dict (names, dtypes, shapes and bytes).

    Independent of device and of the order parameters were registered; changes with any weight.
    """
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def _components_hash(vae: AutoencoderKL, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> str:
    parts = [content_hash(vae, 64), content_hash(unet, 64), content_hash(text_encoder, 64)]
    # the latent scaling is config, not weights, but it changes every latent (and so the layouts)
    parts.append(f"scale={vae.config['scaling_factor']};shift={getattr(vae.config, 'shift_factor', None)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- built-in models

# Frequent caption words get whole-word BPE tokens, so short prompts fit the tiny context.
_TINY_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "at",
    "on",
    "with",
    "and",
    "photo",
    "scene",
    "street",
    "city",
    "road",
    "car",
    "cars",
    "truck",
    "bus",
    "building",
    "buildings",
    "tree",
    "trees",
    "sky",
    "sidewalk",
    "person",
    "people",
    "pole",
    "sign",
    "traffic",
    "light",
    "lights",
    "clear",
    "day",
    "daytime",
    "sunny",
    "cloudy",
    "fog",
    "foggy",
    "dense",
    "heavy",
    "rain",
    "rainy",
    "wet",
    "snow",
    "snowy",
    "winter",
    "night",
    "dark",
    "evening",
    "weather",
    "driving",
    "view",
    "urban",
]


def build_tokenizer(model_max_length: int = 32) -> CLIPTokenizer:
    """A CLIP BPE tokenizer built in memory, without any download.

    Vocabulary: the 256 byte-level characters, their end-of-word variants, whole-word merges for
    frequent caption words, and CLIP's special tokens. Any text can be tokenised (it falls back to
    bytes), which is all the tiny and random-weight models need.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _TINY_WORDS:
        # chain w[0]+w[1] -> w[:2], w[:2]+w[2] -> w[:3], ... ending with the '</w>' form
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            left = left + right
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(left, len(vocab))
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    # transformers 5 annotates merges as "a b" strings; the BPE backend takes pairs as well
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)  # type: ignore[arg-type]


def _text_config(tokenizer: CLIPTokenizer, **kw: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        **kw,
    )


def tiny_unet_config() -> dict[str, Any]:
    """The tiny U-Net: 3 levels (32, 64, 64), 2 layers per block -> 9 decoder layers (layout 2, 5, 8)."""
    return {
        "sample_size": (16, 32),  # latent cells -> 64x128 pixels with the stride-4 VAE
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 2,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
    }


def tiny_vae_config() -> dict[str, Any]:
    """The tiny VAE: 3 levels, 2 downsamplings -> latent stride 4, 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        # SD's rule: scaling_factor = 1 / std of the latents, so z0 has unit scale against the noise.
        # Measured for these seeded random weights on procedural scenes (std 0.40); a trained VAE
        # must be recalibrated (the base-model trainer sets it from its own latents).
        "scaling_factor": 2.5,
    }


def sd15_unet_config() -> dict[str, Any]:
    """Stable Diffusion 1.5's U-Net configuration (diffusers' ``unet/config.json`` of SD 1.5)."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def sd15_vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def _check_builtin(ref: str, what: str) -> None:
    if ref not in BUILTIN_REFS:
        raise ModelError(f"{what}: {ref!r} is not a built-in reference; use one of {list(BUILTIN_REFS)}")


@contextmanager
def _seeded(seed: int, part: str) -> Iterator[None]:
    """A forked global RNG seeded from (seed, part): each part's weights are independent of the others."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + _PIPELINE_PARTS.index(part))
        yield


def build_unet(ref: str, seed: int = BUILTIN_SEED) -> UNet2DConditionModel:
    """Only the U-Net of a built-in reference (identical to ``load_components(ref).unet``)."""
    _check_builtin(ref, "build_unet")
    config = tiny_unet_config() if ref == TINY else sd15_unet_config()
    with _seeded(seed, "unet"):
        return UNet2DConditionModel(**config).eval()


def build_vae(ref: str, seed: int = BUILTIN_SEED) -> AutoencoderKL:
    """Only the VAE of a built-in reference (identical to ``load_components(ref).vae``)."""
    _check_builtin(ref, "build_vae")
    config = tiny_vae_config() if ref == TINY else sd15_vae_config()
    with _seeded(seed, "vae"):
        return AutoencoderKL(**config).eval()


def build_text_encoder(ref: str, seed: int = BUILTIN_SEED) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """Text encoder and tokenizer of a built-in reference (as in ``load_components(ref)``)."""
    _check_builtin(ref, "build_text_encoder")
    if ref == TINY:
        tokenizer = build_tokenizer(32)
        sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64}
        sizes |= {"num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32}
    else:  # CLIP ViT-L/14 text tower, as in SD 1.5
        tokenizer = build_tokenizer(77)
        sizes = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072}
        sizes |= {"num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768}
    with _seeded(seed, "text_encoder"):
        return CLIPTextModel(_text_config(tokenizer, **sizes)).eval(), tokenizer


# --------------------------------------------------------------------------- pretrained checkpoints


def _is_pathlike(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists() or not _HUB_ID_RE.match(ref)


def is_local_ref(ref: str) -> bool:
    """A model reference that names a local folder (not ``tiny``/``sd15-arch``, not a hub id)."""
    return ref not in BUILTIN_REFS and _is_pathlike(ref)


def _local_folder(ref: str) -> Path:
    """The diffusers folder a path-like reference names, or a ModelError saying what is wrong."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise ModelError(
            f"model reference {ref!r}: folder does not exist (fix: pass 'tiny', 'sd15-arch', a hub id "
            "like 'stable-diffusion-v1-5/stable-diffusion-v1-5', or a diffusers folder with "
            f"{', '.join(p + '/' for p in _PIPELINE_PARTS)})"
        )
    missing = [p for p in _PIPELINE_PARTS if not (folder / p).is_dir()]
    if missing:
        raise ModelError(
            f"{folder}: not a diffusers Stable Diffusion folder, missing {', '.join(missing)} "
            "(fix: save it with StableDiffusionPipeline.save_pretrained or factory.models.save_components)"
        )
    return folder


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def check_model_ref(ref: str) -> None:
    """Fail fast, without loading weights: a local folder must be a diffusers Stable Diffusion
    folder whose parts' configs parse; a hub id must be in the Hugging Face cache when the hub
    is offline. Jobs call this on the driver so a typo is one clear error, not one failed model
    load per worker."""
    if not isinstance(ref, str) or not ref:
        raise ModelError(f"model reference must be a non-empty string, got {ref!r}")
    if ref in BUILTIN_REFS:
        return
    if _is_pathlike(ref):
        folder = _local_folder(ref)
        for part in ("vae", "unet", "text_encoder"):
            config = folder / part / "config.json"
            try:
                json.loads(config.read_text())
            except (OSError, ValueError) as e:
                raise ModelError(f"{config}: unreadable model config ({e}); fix: re-save the model") from None
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(ref, "model_index.json"), str) and _hub_offline():
        raise ModelError(
            f"model reference {ref!r}: not in the Hugging Face cache and HF_HUB_OFFLINE is set "
            f"(fix: `hf download {ref}` where there is network access, or pass a local diffusers folder)"
        )


def check_controlnet_folder(path: str | Path) -> None:
    """A ControlNet folder has a parseable config.json and a weights file (no weights loaded)."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(
            f"{path}: no ControlNet here (config.json missing); fix: pass the folder written by "
            "ControlNetModel.save_pretrained (the ControlNet training output)"
        )
    try:
        json.loads(config.read_text())
    except ValueError as e:
        raise ModelError(
            f"{config}: unreadable ControlNet config ({e}); fix: retrain or restore it"
        ) from None
    if not any(path.glob("diffusion_pytorch_model*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path}: ControlNet config but no weights file (fix: retrain or restore it)")


def _load_pretrained(ref: str) -> tuple:
    """(vae, unet, text_encoder, tokenizer, scheduler) from a local diffusers folder or a hub id."""
    local = _is_pathlike(ref)
    source = str(_local_folder(ref)) if local else ref
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler")
    except (OSError, ValueError) as e:
        if local:
            raise ModelError(f"{ref}: cannot load the diffusers folder: {e}") from e
        hint = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if _hub_offline() else ""
        raise ModelError(
            f"model reference {ref!r}: checkpoint files are not available locally{hint}. "
            f"Fix: download it once where there is network access (`hf download {ref}`) so it is in "
            "the Hugging Face cache, or pass a local diffusers folder instead of a hub id. "
            f"Underlying error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    # Keep the model's own training schedule, but always as DDPM (the training-time scheduler).
    keys = set(SD_SCHEDULE) | {"trained_betas", "timestep_spacing", "rescale_betas_zero_snr"}
    scheduler = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if k in keys})
    return vae, unet, text_encoder, tokenizer, scheduler


# --------------------------------------------------------------------------- public entry points


def load_components(
    ref: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> SDComponents:
    """Resolve a model reference to its components on ``device`` (dtype: ``default_dtype(device)``).

    Every module is returned in eval mode; callers that train one switch it to train mode.
    """
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    if not isinstance(ref, str) or not ref:
        raise ModelError(f"model reference must be a non-empty string, got {ref!r}")
    if ref in BUILTIN_REFS:
        text_encoder, tokenizer = build_text_encoder(ref)
        vae, unet = build_vae(ref), build_unet(ref)
        scheduler = DDPMScheduler(**SD_SCHEDULE)
    else:
        vae, unet, text_encoder, tokenizer, scheduler = _load_pretrained(ref)
    digest = _components_hash(vae, unet, text_encoder)
    for m in (vae, unet, text_encoder):
        _move(m, device, dtype).eval()
    size = unet.config["sample_size"]
    latent_hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    factor = vae_scale_factor(vae)
    return SDComponents(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=scheduler,
        ref=ref,
        content_hash=digest,
        sample_size=(latent_hw[0] * factor, latent_hw[1] * factor),
    )


def save_components(components: SDComponents, folder: str | Path) -> Path:
    """Write the components as a diffusers ``StableDiffusionPipeline`` folder (loadable as a ref)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        # diffusers' annotations are narrower than what it accepts: any scheduler instance (the
        # KarrasDiffusionSchedulers enum names them), and no safety checker or feature extractor
        scheduler=components.noise_scheduler,  # type: ignore[arg-type]
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@torch.no_grad()
def encode_prompts(components: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (B, max_length, D) for ``prompts``; the frozen encoder, as in SD."""
    if isinstance(prompts, str):
        raise TypeError("encode_prompts expects a list of prompts, got a single string")
    tok = components.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tok.input_ids.to(components.text_encoder.device)
    return components.text_encoder(ids)[0]


def denoising_target(scheduler: Any, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a U-Net on ``scheduler`` learns to predict: the noise (epsilon, SD 1.5 and ``tiny``)
    or the velocity (v_prediction, e.g. the offline base model). Every trainer uses this, so a
    ControlNet is trained on its base model's own objective."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    raise ModelError(f"prediction_type {kind!r} cannot be trained here; use 'epsilon' or 'v_prediction'")


def compile_for_inference(fn: Any, mode: str = "default") -> Any:
    """``torch.compile(fn)`` for inference throughput - a compiled *reference*: a module passed in
    keeps its own module tree (hashes, saving, other users), only calls through the result run
    compiled. SD's 1x1 convolutions are compiled as GEMMs, which fuse with their neighbours."""
    import torch._inductor.config as inductor_config

    inductor_config.conv_1x1_as_mm = True
    return torch.compile(fn, mode=mode)


def new_controlnet(components: SDComponents, channels: int) -> ControlNetModel:
    """A ControlNet initialised from the U-Net, whose conditioning input has ``channels`` channels.

    The conditioning embedding downsamples the pixel-resolution condition to the latent grid, so
    it gets one stride-2 conv per VAE downsampling (3 for SD, 2 for ``tiny``).
    """
    if channels < 1:
        raise ModelError(f"new_controlnet: channels must be >= 1, got {channels}")
    n_down = vae_scale_factor(components.vae).bit_length() - 1
    embed = (16, 32, 96, 256, 256, 256)[: n_down + 1]
    net = ControlNetModel.from_unet(
        components.unet, conditioning_embedding_out_channels=embed, conditioning_channels=channels
    )
    return _move(net, components.unet.device, components.unet.dtype)


def load_controlnet(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> ControlNetModel:
    """A trained ControlNet from a folder written by ``ControlNetModel.save_pretrained``."""
    path = Path(path)
    check_controlnet_folder(path)
    device = resolve_device(device)
    net = ControlNetModel.from_pretrained(path)
    return _move(net, device, dtype or default_dtype(device)).eval()


def describe(components: SDComponents) -> dict[str, Any]:
    """Small JSON-safe description (ref, hash, sizes) for artifact metadata."""
    return {
        "ref": components.ref,
        "content_hash": components.content_hash,
        "sample_size": list(components.sample_size),
        "vae_scale_factor": components.vae_scale_factor,
    }
