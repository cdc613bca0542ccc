"""Train the tiny base text-to-image model of the offline world.

Why: with no weights to download, the offline world needs its own stand-in for a pretrained
Stable Diffusion. It is what teaches "fog" or "night" to the text side, so the LUMEN ControlNet
(trained label-free on *clear* scenes only) can later produce weather variants from a prompt.

What it does, top to bottom:
1. render ``n_scenes`` unlabelled procedural scenes in memory, cycling through the weathers
   (clear / fog / night / rain / snow), each with a caption naming its weather;
2. train the VAE (reconstruction + a small KL term), then set its ``scaling_factor`` so latents
   have unit variance (as SD does);
3. train the text-conditioned U-Net (epsilon or v prediction on the DDPM schedule of the
   components, optionally rescaled to zero terminal SNR) jointly with the text encoder, with
   caption dropout so classifier-free guidance works;
4. save a diffusers ``StableDiffusionPipeline`` folder (``safety_checker=None``) atomically,
   plus ``lumen_base.json`` (config, timings, loss curves) and a preview grid with per-weather
   image statistics (does "at night" come out darker, "in fog" flatter?).

A long run is resumable: after the VAE phase and every ``checkpoint_every`` U-Net steps the
whole training state (weights, optimiser, schedule, random generator, losses) is written
atomically to ``<out>.ckpt/latest.pt``; rerunning the same command continues from it and ends
with the same weights as an uninterrupted run. Budgets are step counts (``max_minutes`` is an
optional safety stop, recorded when it fires), so the result does not depend on the machine.

Usage::

    python -m factory.train.base --config configs/train/procedural_base.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from factory.cli import config_help, run_cli
from factory.config import check, load_config, to_dict

WEATHERS = ("clear", "fog", "night", "rain", "snow")

DEFAULT_CAPTIONS = {
    "clear": "a city street scene on a clear day",
    "fog": "a city street scene in fog",
    "night": "a city street scene at night",
    "rain": "a city street scene in the rain",
    "snow": "a city street scene in snow",
}


@dataclass
class BaseTrainConfig:
    """Recipe for the offline base model. Defaults: 64x128 on 2 CPU cores in about 8 minutes."""

    out: Path = Path("outputs/base/procedural")
    init: str = "tiny"  # model reference giving the architecture and initial weights
    height: int = 64
    width: int = 128
    n_scenes: int = 500
    weathers: tuple[str, ...] = WEATHERS
    captions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPTIONS))
    seed: int = 0
    threads: int = 2
    # VAE phase
    vae_steps: int = 400
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_crop: tuple[int, int] | None = (32, 64)  # random crops: the VAE is convolutional, 4x cheaper
    # a narrower VAE than ``init``'s (same depth and latent stride): ~4x cheaper on a CPU
    vae_block_out_channels: tuple[int, ...] | None = None
    # U-Net phase
    unet_steps: int = 2500
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    # "constant": constant after warm-up (stopping early leaves a consistent model);
    # "cosine": decays to 0 at unet_steps (better final weights for a long, fixed budget)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    checkpoint_every: int = 250  # U-Net steps between resumable checkpoints (0: none)
    max_minutes: float | None = None  # stop the U-Net phase early on a slow machine (recorded)
    train_text_encoder: bool = True
    text_lr: float = 3e-4
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    # Offset noise (a per-sample, per-channel constant added to the noise): plain epsilon noise
    # never destroys an image's mean, so a model trained on it cannot move far from mid-grey and
    # "at night" comes out barely darker. 0 turns it off; ~0.1 is the usual value.
    noise_offset: float = 0.0
    # What the U-Net predicts: "epsilon" (the noise, as SD 1.5) or "v_prediction" (the velocity
    # sqrt(a)*noise - sqrt(1-a)*x0, as SD 2.x). Saved in the scheduler config, which every later
    # stage (ControlNet training, synthesis) reads.
    prediction_type: str = "epsilon"
    # Zero terminal SNR (Lin et al. 2023, diffusers' rescale_betas_zero_snr + "trailing" timestep
    # spacing): the last timestep is pure noise, so the model must take an image's mean brightness
    # from the caption rather than from the leftover signal in the noise (needs v_prediction).
    zero_terminal_snr: bool = False
    # preview
    preview_steps: int = 25
    preview_guidance: float = 3.0
    preview_per_weather: int = 4

    def __post_init__(self) -> None:
        check(
            self.height % 16 == 0 and self.height > 0,
            "height",
            f"must be a positive multiple of 16, got {self.height}",
        )
        check(
            self.width % 16 == 0 and self.width > 0,
            "width",
            f"must be a positive multiple of 16, got {self.width}",
        )
        check(self.n_scenes >= 1, "n_scenes", f"must be >= 1, got {self.n_scenes}")
        check(0.0 <= self.noise_offset <= 1.0, "noise_offset", f"must be in [0, 1], got {self.noise_offset}")
        check(
            self.prediction_type in ("epsilon", "v_prediction"),
            "prediction_type",
            f"must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}",
        )
        check(
            not self.zero_terminal_snr or self.prediction_type == "v_prediction",
            "zero_terminal_snr",
            "needs prediction_type=v_prediction (epsilon cannot be inverted at zero SNR)",
        )
        bad = [w for w in self.weathers if w not in WEATHERS]
        check(
            not bad and len(self.weathers) > 0,
            "weathers",
            f"must be a non-empty subset of {list(WEATHERS)}, got {list(self.weathers)}",
        )
        missing = [w for w in self.weathers if w not in self.captions]
        check(
            not missing,
            "captions",
            f"no caption for weathers {missing}; add e.g. captions.{missing[0] if missing else ''}='...'",
        )
        for name in (
            "vae_steps",
            "unet_steps",
            "batch_size",
            "vae_batch_size",
            "threads",
            "checkpoint_every",
        ):
            check(
                getattr(self, name) >= (0 if name.endswith(("_steps", "_every")) else 1),
                name,
                f"out of range: {getattr(self, name)}",
            )
        for name in ("lr", "vae_lr", "text_lr"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(
            0.0 <= self.caption_dropout < 1.0,
            "caption_dropout",
            f"must be in [0, 1), got {self.caption_dropout}",
        )
        check(self.vae_kl_weight >= 0, "vae_kl_weight", f"must be >= 0, got {self.vae_kl_weight}")


def narrower_vae(vae, channels: tuple[int, ...], seed: int):
    """A fresh AutoencoderKL like ``vae`` (same depth, latent channels, stride) with other widths."""
    from diffusers import AutoencoderKL

    if len(channels) != len(vae.config.block_out_channels):
        raise ValueError(
            f"vae_block_out_channels {list(channels)} must have {len(vae.config.block_out_channels)} entries "
            "(one per VAE level) to keep the latent stride"
        )
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    config["block_out_channels"] = tuple(channels)
    config["norm_num_groups"] = min(config.get("norm_num_groups", 32), min(channels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**config)


def training_scheduler(sched, cfg: BaseTrainConfig):
    """The DDPM schedule of ``init`` with this recipe's prediction type and terminal SNR."""
    from diffusers import DDPMScheduler

    extra = {"prediction_type": cfg.prediction_type, "rescale_betas_zero_snr": cfg.zero_terminal_snr}
    if cfg.zero_terminal_snr:
        extra["timestep_spacing"] = "trailing"  # sampling starts at the pure-noise step
    return DDPMScheduler.from_config(sched.config, **extra)


def render_pool(cfg: BaseTrainConfig) -> tuple[np.ndarray, list[str]]:
    """Render the unlabelled training pool: uint8 images (N,H,W,3) and their weather names."""
    from factory.data import procedural

    rng = np.random.default_rng(cfg.seed)
    images, weathers = [], []
    for i in tqdm(range(cfg.n_scenes), desc="render scenes", leave=False):
        scene = procedural.render_scene(rng, cfg.height, cfg.width)
        weather = cfg.weathers[i % len(cfg.weathers)]
        image = procedural.apply_weather(
            scene.image,
            scene.depth,
            weather,
            rng,
            ground=scene.ground,
            emissive=scene.emissive,
            lamps=scene.lamps,
        )
        images.append(np.asarray(image, dtype=np.uint8))
        weathers.append(weather)
    return np.stack(images), weathers


def _batch(
    x: torch.Tensor, n: int, g: torch.Generator, crop: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random indices and the matching items, randomly mirrored left-right and cropped."""
    idx = torch.randint(0, len(x), (n,), generator=g)
    xb = x[idx].clone()
    flip = torch.rand(n, generator=g) < 0.5
    xb[flip] = xb[flip].flip(-1)
    if crop is not None:
        ch, cw = min(crop[0], xb.shape[-2]), min(crop[1], xb.shape[-1])
        y0 = int(torch.randint(0, xb.shape[-2] - ch + 1, (1,), generator=g))
        x0 = int(torch.randint(0, xb.shape[-1] - cw + 1, (1,), generator=g))
        xb = xb[..., y0 : y0 + ch, x0 : x0 + cw]
    return idx, xb


def train_vae(vae, pixels: torch.Tensor, cfg: BaseTrainConfig, g: torch.Generator) -> list[float]:
    """Reconstruction (MSE + L1) plus a small KL term; returns the loss curve."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    # OneCycleLR divides by (pct_start * total_steps - 1): below 20 steps its warm-up phase is empty.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.vae_lr, total_steps=max(cfg.vae_steps, 20), pct_start=0.1
    )
    losses = []
    bar = tqdm(range(cfg.vae_steps), desc="vae", leave=False)
    for _ in bar:
        _, x = _batch(pixels, cfg.vae_batch_size, g, cfg.vae_crop)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_pool(vae, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool image (flipped copies appended), unscaled."""
    both = torch.cat([pixels, pixels.flip(-1)])
    means, stds = [], []
    for i in range(0, len(both), batch):
        post = vae.encode(both[i : i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_unet(
    components,
    latents: tuple[torch.Tensor, torch.Tensor],
    captions: list[str],
    cfg: BaseTrainConfig,
    g: torch.Generator,
    ckpt: Checkpoint | None = None,
) -> tuple[list[float], float]:
    """Denoising training (``cfg.prediction_type``) of the U-Net and text encoder on the cached latents.

    With ``ckpt``, continues from its saved U-Net state (if any) and saves one every
    ``cfg.checkpoint_every`` steps; the random draws come from ``g`` only, so a resumed run
    repeats exactly what the uninterrupted one would have done. Returns the loss curve and the
    phase's seconds across interruptions.
    """
    from diffusers.optimization import get_scheduler

    from factory.models import denoising_target

    unet, te, tok, sched = (
        components.unet,
        components.text_encoder,
        components.tokenizer,
        components.noise_scheduler,
    )
    mean, std = latents
    scale = components.vae.config.scaling_factor
    n_pool = len(captions)
    caps = captions + captions  # flipped copies share the caption
    ids_all = tokenize(tok, caps)
    ids_empty = tokenize(tok, [""])
    unet.train()
    te.train(cfg.train_text_encoder)
    te.requires_grad_(cfg.train_text_encoder)
    groups: list[dict[str, Any]] = [{"params": list(unet.parameters()), "lr": cfg.lr}]
    if cfg.train_text_encoder:
        groups.append({"params": list(te.parameters()), "lr": cfg.text_lr})
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    lr_sched = get_scheduler(
        "constant_with_warmup" if cfg.lr_schedule == "constant" else "cosine",
        opt,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.unet_steps,
    )
    T = sched.config.num_train_timesteps
    losses: list[float] = []
    state = ckpt.state.get("unet_phase") if ckpt else None
    if state is not None:
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_schedule"])
        g.set_state(state["generator"])
        losses = list(state["losses"])
    t_start = time.perf_counter()
    prior_s = float(state.get("seconds", 0.0)) if state is not None else 0.0
    bar = tqdm(range(len(losses), cfg.unet_steps), desc="unet", initial=len(losses), total=cfg.unet_steps)
    deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes else None
    for step in bar:
        if deadline is not None and time.perf_counter() > deadline:
            break
        idx = torch.randint(0, 2 * n_pool, (cfg.batch_size,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        ids = ids_all[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        ids[drop] = ids_empty
        with torch.set_grad_enabled(cfg.train_text_encoder):
            enc = te(ids)[0]
        noise = torch.randn(z0.shape, generator=g)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=g)
        t = torch.randint(0, T, (cfg.batch_size,), generator=g)
        zt = sched.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=enc).sample
        loss = F.mse_loss(pred, denoising_target(sched, z0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in groups for p in grp["params"]], 1.0)
        opt.step()
        lr_sched.step()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            ckpt.save(
                unet_phase={
                    "unet": unet.state_dict(),
                    "text_encoder": te.state_dict(),
                    "optimizer": opt.state_dict(),
                    "lr_schedule": lr_sched.state_dict(),
                    "generator": g.get_state(),
                    "losses": losses,
                    "seconds": prior_s + time.perf_counter() - t_start,
                }
            )
    unet.eval()
    te.eval()
    return losses, prior_s + time.perf_counter() - t_start


def build_pipeline(components):
    """A stock StableDiffusionPipeline around the components (DDIM for short sampling)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def image_stats(images: np.ndarray) -> dict[str, float]:
    """Brightness (mean luma) and contrast (per-image luma std, averaged) of uint8 images."""
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return {
        "brightness": float(luma.mean() / 255),
        "contrast": float(luma.reshape(len(images), -1).std(1).mean() / 255),
    }


def preview(pipe, cfg: BaseTrainConfig, out: Path, pool: np.ndarray, weathers: list[str]) -> dict:
    """Sample each caption with fixed seeds; save a grid and compare statistics with the pool."""
    from factory.viz import save_grid

    rows, stats = [], {}
    for weather in cfg.weathers:
        gens = [torch.Generator().manual_seed(cfg.seed * 1000 + i) for i in range(cfg.preview_per_weather)]
        imgs = pipe(
            [cfg.captions[weather]] * cfg.preview_per_weather,
            height=cfg.height,
            width=cfg.width,
            num_inference_steps=cfg.preview_steps,
            guidance_scale=cfg.preview_guidance,
            generator=gens,
            output_type="np",
        ).images
        imgs = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)
        real = pool[[i for i, w in enumerate(weathers) if w == weather][: cfg.preview_per_weather]]
        rows.append([*real, *imgs])
        stats[weather] = {
            "generated": image_stats(imgs),
            "real": image_stats(pool[[w == weather for w in weathers]]),
        }
    save_grid(rows, out / "preview.png", row_labels=list(cfg.weathers))
    return stats


def train_base(cfg: BaseTrainConfig) -> Path:
    """Run the whole recipe and return the saved pipeline folder."""
    from factory.models import load_components

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    components = load_components(cfg.init)
    components.noise_scheduler = training_scheduler(components.noise_scheduler, cfg)
    if cfg.vae_block_out_channels:
        components.vae = narrower_vae(components.vae, cfg.vae_block_out_channels, cfg.seed)
    pool, weathers = render_pool(cfg)
    timings["render_s"] = time.perf_counter() - t0

    pixels = torch.from_numpy(pool).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    out = Path(cfg.out)
    ckpt = Checkpoint(out, cfg)
    t1 = time.perf_counter()
    vae_state = ckpt.state.get("vae_phase")
    if vae_state is None:
        vae_losses = train_vae(components.vae, pixels, cfg, g)
        vae_s = time.perf_counter() - t1
        ckpt.save(
            vae_phase={
                "vae": components.vae.state_dict(),
                "generator": g.get_state(),
                "losses": vae_losses,
                "seconds": vae_s,
            }
        )
    else:
        print(f"resuming from {ckpt.path}", flush=True)
        components.vae.load_state_dict(vae_state["vae"])
        components.vae.eval()
        g.set_state(vae_state["generator"])
        vae_losses = list(vae_state["losses"])
        vae_s = float(vae_state.get("seconds", 0.0))  # the interrupted run's, not this call's
    timings["vae_s"] = vae_s
    mean, std = encode_pool(components.vae, pixels)
    scaling = float(1.0 / mean.std())
    components.vae.register_to_config(scaling_factor=scaling)

    captions = [cfg.captions[w] for w in weathers]
    unet_losses, timings["unet_s"] = train_unet(components, (mean, std), captions, cfg, g, ckpt)
    # training time across interruptions: rendering (this call) + both phases (all calls)
    timings["train_total_s"] = timings["render_s"] + timings["vae_s"] + timings["unet_s"]

    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = build_pipeline(components)
    pipe.save_pretrained(tmp, safe_serialization=True)
    t3 = time.perf_counter()
    stats = preview(pipe, cfg, tmp, pool, weathers) if cfg.preview_per_weather > 0 else {}
    timings["preview_s"] = time.perf_counter() - t3
    meta = {
        "config": to_dict(cfg),
        "vae_scaling_factor": scaling,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "vae_loss": {"first": vae_losses[0] if vae_losses else None, "last50": _tail(vae_losses)},
        "unet_loss": {"first": unet_losses[0] if unet_losses else None, "last50": _tail(unet_losses)},
        # the whole curves, as means of 50-step windows (the recipe of a shipped model shows them)
        "loss_curves": {"vae": _windows(vae_losses), "unet": _windows(unet_losses)},
        "resumed": ckpt.resumed,
        "unet_steps_done": len(unet_losses),
        "weather_stats": stats,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (tmp / "lumen_base.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    ckpt.remove()
    return out


class Checkpoint:
    """The resumable training state of one base-model run, beside its output folder.

    ``<out>.ckpt/latest.pt`` holds tensors and plain containers only (loaded with
    ``weights_only=True``) plus the digest of the recipe it belongs to: a checkpoint of another
    recipe is refused with the fix, never silently continued.
    """

    def __init__(self, out: Path, cfg: BaseTrainConfig):
        self.path = out.with_name(out.name + ".ckpt") / "latest.pt"
        self.recipe = recipe_digest(cfg)
        self.state: dict[str, Any] = {}
        self.resumed = False
        if self.path.is_file():
            state = torch.load(self.path, weights_only=True)
            if state.get("recipe") != self.recipe:
                raise ValueError(
                    f"{self.path} belongs to another recipe (digest {state.get('recipe')} != {self.recipe}); "
                    f"delete {self.path.parent} to start over, or rerun with the config that wrote it"
                )
            self.state = state
            self.resumed = True

    def save(self, **phase: Any) -> None:
        from factory.atomic import atomic_torch_save

        self.state.update(phase)
        self.state["recipe"] = self.recipe
        atomic_torch_save(self.path, self.state)

    def remove(self) -> None:
        if self.path.parent.is_dir():
            shutil.rmtree(self.path.parent)


def recipe_digest(cfg: BaseTrainConfig) -> str:
    """What defines the weights: every field but where they go, threads, checkpointing and preview."""
    from factory.atomic import digest

    fields = to_dict(cfg)
    for name in (
        "out",
        "threads",
        "checkpoint_every",
        "max_minutes",
        "preview_steps",
        "preview_guidance",
        "preview_per_weather",
    ):
        fields.pop(name, None)
    # "weathers" was called "conditions" when the first checkpoints were written: digest it under
    # that name so a checkpoint written before the rename still resumes (same recipe, same digest).
    fields = {("conditions" if k == "weathers" else k): v for k, v in fields.items()}
    return digest(fields)


def _windows(losses: list[float], n: int = 50) -> list[float]:
    return [round(float(np.mean(losses[i : i + n])), 5) for i in range(0, len(losses), n)]


def _tail(losses: list[float], n: int = 50) -> float | None:
    return float(np.mean(losses[-n:])) if losses else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m factory.train.base",
        description=__doc__.split("\n\n")[0],
        epilog=config_help(BaseTrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", type=Path, default=None, help="YAML with BaseTrainConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. unet_steps=100")
    args = ap.parse_args(argv)
    cfg = load_config(BaseTrainConfig, args.config, args.overrides, config_dir="configs/train")
    out = train_base(cfg)
    meta = json.loads((out / "lumen_base.json").read_text())
    print(
        json.dumps(
            {"out": str(out), "timings": meta["timings"], "weather_stats": meta["weather_stats"]}, indent=1
        )
    )
    return 0


# what the resumable checkpoint (module docstring) means for a user who pressed Ctrl-C
RESUME = (
    "rerun the same command to resume from <out>.ckpt/latest.pt (written after the VAE phase and "
    "every checkpoint_every U-Net steps)"
)

if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=RESUME))
