"""ControlNet training for any N-channel condition (LUMEN: label-free neural layouts).

Why: LUMEN conditions a ControlNet on a neural layout computed from the image itself, so a
ControlNet can be trained on (image, layout, caption) triples with no human label. The same
trainer takes any other condition (Canny, depth, semantic colour maps) for the paper's
conditioning comparison: only ``condition.kind`` changes.

The run, top to bottom (``train_controlnet``):
1. check inputs before any step: the dataset is non-empty, every image has one size, the base
   model reference resolves, the condition's channel count equals the ControlNet's;
2. cache latents (frozen VAE, posterior mean and std), conditions and caption embeddings;
3. train the ControlNet (initialised by ``ControlNetModel.from_unet``, base model frozen) with
   accelerate: mixed precision, gradient checkpointing, gradient accumulation, multi-GPU via
   ``accelerate launch``; condition dropout (zeroed condition) for guidance on the condition;
4. write checkpoints atomically (temporary folder, then ``os.replace``) and resume from the
   latest complete one: a rerun of the same command ends at the same step;
5. save validation grids (reference | condition | one sample per prompt) every K steps;
6. save the ControlNet (``save_pretrained``) and ``lumen_training.json`` into ``out``.

Batches, noise and timesteps are drawn from generators seeded by (seed, step), so a resumed run
sees exactly the batches an uninterrupted one would.

Processes: ``batch_size`` is per process; one optimiser step uses ``batch_size x processes x
grad_accum`` samples (``lumen_training.json`` records the process count and that product).
Every process writes which samples it used at each step to ``<out>/batches/rank<k>.jsonl``
(factory.train.batch_audit): one line per step, always on, so a split that gives two processes
the same samples or skips some can be seen. A resume truncates that audit and train_log.jsonl
to the resumed step, so each step is listed once. On a machine without GPUs, ``accelerate
launch --multi_gpu`` starts the processes but accelerate runs them as one each unless
``ACCELERATE_USE_CPU=1`` is set (gloo); the trainer refuses that case rather than let each
process train alone into the same ``out``.

Usage::

    python -m factory.train.controlnet --config configs/train/procedural_controlnet_layout.yaml [key=value ...]
    accelerate launch -m factory.train.controlnet --config configs/train/cityscapes_sd15_layout.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m factory.train.controlnet ...  # CPU, gloo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from factory.atomic import fsync_dir
from factory.cli import config_help, run_cli
from factory.config import ConfigError, absolute_paths, check, from_dict, load_config, to_dict
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.sample import DataError, Sample, SampleRef
from factory.data.tree import fetch_all
from factory.train.batch_audit import BatchAudit, reset_for_resume, truncate_after
from factory.train.recipe import RESULT_FILE, pca_file_hash

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


class TrainError(ValueError):
    """Bad training input, found before any step runs. The message names the cause and the fix."""


@dataclass
class CaptionConfig:
    """Captions: ``template`` (fields {weather}, {city}, {key}), overridden per image by a caption
    file when ``files`` is true: ``<dir>/<key>.txt`` if ``dir`` is set, else the image path with
    ``.txt`` instead of its suffix. ``{weather}`` is the reference's weather (clear, fog, ...);
    ``{condition}``, its name in older configs, is still accepted as an alias of ``{weather}``."""

    template: str = "a city street scene on a clear day"
    files: bool = True
    dir: Path | None = None
    dropout: float = 0.0  # probability of the empty caption

    def __post_init__(self) -> None:
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class ValidationConfig:
    """Validation grids every ``every`` steps (0 = only at the end; -1 = never)."""

    every: int = 0
    prompts: list[str] = field(
        default_factory=lambda: ["a city street scene on a clear day", "a city street scene at night"]
    )
    num_references: int = 2
    steps: int = 20
    guidance: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.every >= -1, "every", f"must be >= -1, got {self.every}")
        check(len(self.prompts) >= 1, "prompts", "needs at least one prompt")
        check(self.num_references >= 1, "num_references", f"must be >= 1, got {self.num_references}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")


@dataclass
class ControlNetTrainConfig:
    """One ControlNet training run. ``condition`` is a factory.conditions.ConditionConfig mapping."""

    out: Path = Path("outputs/controlnet/run")
    base_model: str = "tiny"
    data: DatasetConfig = field(default_factory=DatasetConfig)
    condition: Any = field(default_factory=lambda: {"kind": "canny"})
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    resolution: tuple[int, int] | None = None  # (H, W) to resize images to; None = as read
    steps: int = 500
    batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    condition_dropout: float = 0.1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    controlnet_init: str | None = None  # start from an existing ControlNet folder
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(
            self.lr_scheduler in LR_SCHEDULES,
            "lr_scheduler",
            f"{self.lr_scheduler!r} not in {list(LR_SCHEDULES)}",
        )
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(
            0.0 <= self.condition_dropout < 1.0,
            "condition_dropout",
            f"must be in [0, 1), got {self.condition_dropout}",
        )
        check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        check(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        if self.resolution is not None:
            h, w = self.resolution
            check(
                h > 0 and w > 0 and h % 8 == 0 and w % 8 == 0,
                "resolution",
                f"must be multiples of 8, got {self.resolution}",
            )
        if isinstance(self.condition, dict):
            try:
                from factory.conditions import ConditionConfig
            except ImportError:  # conditions not installed: build_condition reports it at run time
                return
            try:
                self.condition = from_dict(ConditionConfig, self.condition)
            except ConfigError as e:
                raise ConfigError(f"condition.{e}") from None


# --------------------------------------------------------------------------- checks and data


def check_image_sizes(refs: Sequence[SampleRef]) -> tuple[int, int]:
    """(H, W) shared by every image; reads PNG headers only. Mixed sizes are an error."""
    from PIL import Image

    sizes: dict[tuple[int, int], Path] = {}
    for ref in refs:
        path = Path(ref.paths["image"])
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError as e:
            raise TrainError(
                f"{path}: cannot read image header ({e}); fix: remove or replace the file"
            ) from None
        sizes.setdefault((h, w), path)
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise TrainError(
                f"images of mixed sizes: {p1} is {s1[0]}x{s1[1]} but {p2} is {s2[0]}x{s2[1]}; "
                "fix: train on one size, or set resolution: [H, W] to resize every image"
            )
    return next(iter(sizes))


def caption_for(ref: SampleRef, cfg: CaptionConfig) -> str:
    """The per-image caption file if present (``cfg.files``), else the filled-in template."""
    if cfg.files:
        image = Path(ref.paths["image"])
        path = cfg.dir / f"{ref.key}.txt" if cfg.dir else image.with_suffix(".txt")
        if path.is_file():
            return path.read_text().strip()
    fields = {
        "weather": ref.meta.get("weather", "clear"),
        "city": ref.meta.get("city", ""),
        "key": ref.key,
    }
    try:
        # {condition}: the old name of {weather}, kept so older configs' templates still work
        return cfg.template.format(**fields, condition=fields["weather"])
    except (KeyError, IndexError) as e:
        raise TrainError(
            f"caption.template {cfg.template!r}: unknown field {e}; allowed: {sorted(fields)}"
        ) from None


def _resize(sample: Sample, size: tuple[int, int] | None) -> Sample:
    """Resize image (area) and labels (nearest) to (H, W); labels keep their meaning."""
    if size is None or sample.size == tuple(size):
        return sample
    h, w = size
    sample.image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA)
    for name in ("semantic", "trainids", "instance", "disparity"):
        arr = getattr(sample, name)
        if arr is not None:
            setattr(sample, name, cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST))
    return sample


def load_training_samples(
    refs: Sequence[SampleRef], labels: bool, size: tuple[int, int] | None
) -> list[Sample]:
    from factory.data.cityscapes import load_sample

    return [
        _resize(load_sample(ref, labels=labels), size) for ref in tqdm(refs, desc="load samples", leave=False)
    ]


def to_pixels(samples: Sequence[Sample]) -> torch.Tensor:
    """uint8 HxWx3 images -> float (B,3,H,W) in [-1, 1]."""
    arr = np.stack([s.image for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def condition_tensor(
    provider, samples: Sequence[Sample], channels: int, size: tuple[int, int]
) -> torch.Tensor:
    """Run the provider and check its output against the ControlNet (channels) and images (size)."""
    cond = provider(samples)
    if not isinstance(cond, torch.Tensor) or cond.ndim != 4:
        raise TrainError(
            f"condition {provider.kind!r} must return a (B, C, H, W) tensor, got {type(cond).__name__}"
        )
    if cond.shape[1] != channels:
        raise TrainError(
            f"condition {provider.kind!r} gives {cond.shape[1]} channels but the ControlNet expects "
            f"conditioning_channels={channels}; fix: use a ControlNet trained for this condition "
            "(or unset controlnet_init to create one with the right channel count)"
        )
    if tuple(cond.shape[-2:]) != tuple(size):
        raise TrainError(
            f"condition {provider.kind!r} is {tuple(cond.shape[-2:])} but images are {tuple(size)}: conditions "
            "must be at pixel resolution (upsample layouts bilinearly)"
        )
    return cond.detach().clone().float().cpu()


def check_launch(num_processes: int) -> None:
    """Refuse a launch whose processes accelerate does not join into one run.

    torchrun (``accelerate launch --multi_gpu``) sets ``WORLD_SIZE`` in every process it starts;
    on a machine without GPUs accelerate then joins them (gloo) only if ``ACCELERATE_USE_CPU=1``,
    and otherwise runs each as a run of its own: every process would train on every batch and
    write the same ``out``, with no error.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != num_processes:
        raise TrainError(
            f"launched as one of WORLD_SIZE={world} processes but accelerate runs {num_processes}; "
            "fix: on a machine without GPUs set ACCELERATE_USE_CPU=1 (e.g. `ACCELERATE_USE_CPU=1 "
            f"accelerate launch --multi_gpu --num_processes {world} -m factory.train.controlnet ...`), "
            "or launch one process"
        )


def effective_batch_size(cfg: ControlNetTrainConfig, num_processes: int) -> int:
    """Samples per optimiser step: ``batch_size`` is per process and per micro-step."""
    return cfg.batch_size * num_processes * cfg.grad_accum


def latest_checkpoint(ckpt_root: Path) -> tuple[int, Path] | None:
    """The highest complete checkpoint (``checkpoint-N`` holding trainer_state.json), if any.

    Temporary folders (``.tmp-*``) left by a crash mid-save are never picked up.
    """
    best = None
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                step = int(m.group(1))
                if best is None or step > best[0]:
                    best = (step, p)
    return best


def _seeded(*parts: int) -> torch.Generator:
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def batch_indices(
    n: int, batch: int, micro_step: int, process: int, num_processes: int, seed: int
) -> list[int]:
    """The sample indices one process uses at one micro-step: epochs of seeded permutations.

    The run reads one endless stream: the permutation of epoch 0, then that of epoch 1, ...
    Micro-step ``s`` takes the next ``batch x num_processes`` positions of it, process ``p`` the
    ``p``-th ``batch`` of them. So no position is used twice, and each ``n`` consecutive positions
    are every sample once. When ``batch x num_processes`` divides ``n``, an epoch is a whole
    number of micro-steps and the processes' batches of a micro-step are disjoint; otherwise a
    micro-step can straddle two epochs and hold the same sample twice (the end of one
    permutation, the start of the next), in one process or in two.
    """
    per_step = batch * num_processes
    start = micro_step * per_step + process * batch
    out = []
    for pos in range(start, start + batch):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=_seeded(seed, epoch, 17))
        out.append(int(perm[i]))
    return out


# --------------------------------------------------------------------------- the run


class _Data:
    """Everything the loop needs per sample, in memory: latent posterior, condition, caption.

    Neural layouts are kept as stored (float16 at the feature grid, ~1/256 of the pixel size for
    SD) and upsampled per batch, so memory does not grow with the dataset at pixel resolution;
    other conditions are cached at pixel resolution (float16). Only the validation references'
    images are kept.
    """

    def __init__(self, mean, std, cond, size, stored, caption_idx, embeds, empty_embed, samples, layouts):
        self.mean, self.std, self.cond, self.size, self.stored = mean, std, cond, size, stored
        self.caption_idx, self.embeds, self.empty_embed = caption_idx, embeds, empty_embed
        self.samples = samples  # the first validation.num_references, for the grids
        self.layouts = layouts  # {"read": n, "computed": n} for a layout condition, else None

    def __len__(self) -> int:
        return len(self.mean)

    def condition(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 (B, C, H, W) conditions at pixel resolution for sample indices ``idx``."""
        cond = self.cond[idx].float()
        if self.stored:
            from factory.layout import NeuralLayout

            cond = NeuralLayout.upsample_stored(cond, self.size)
        return cond


@torch.no_grad()
def prepare_data(cfg: ControlNetTrainConfig, refs, components, provider, channels: int, device) -> _Data:
    """Cache latents, conditions and caption embeddings, reading the images chunk by chunk."""
    from factory.models import encode_prompts

    size = cfg.resolution or check_image_sizes(refs)
    needs_labels = bool(getattr(provider, "needs_labels", False))
    stored = callable(getattr(provider, "stored", None))  # a layout: keep it at the feature grid
    captions = [caption_for(r, cfg.caption) for r in refs]
    uniq = sorted(set(captions))
    embeds = torch.cat(
        [encode_prompts(components, uniq[i : i + 64]) for i in range(0, len(uniq), 64)]
    ).float()
    empty = encode_prompts(components, [""]).float()
    vae = components.vae
    means, stds, conds = [], [], []
    keep: list[Sample] = []
    for i in tqdm(range(0, len(refs), 16), desc="cache latents + conditions", leave=False):
        chunk = load_training_samples(refs[i : i + 16], labels=needs_labels, size=cfg.resolution)
        if stored:
            conds.append(provider.stored(chunk).to(torch.float16).cpu())
        else:
            conds.append(condition_tensor(provider, chunk, channels, size).half())
        post = vae.encode(to_pixels(chunk).to(device, vae.dtype)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
        keep += chunk[: max(0, cfg.validation.num_references - len(keep))]
    cond = torch.cat(conds)
    if stored and cond.shape[1] != channels:
        raise TrainError(
            f"condition {provider.kind!r} gives {cond.shape[1]} channels but the ControlNet expects "
            f"conditioning_channels={channels}"
        )
    layouts = {"read": provider.read, "computed": provider.computed} if stored else None
    if layouts is not None:
        print(f"layouts: {layouts['read']} read from the store, {layouts['computed']} computed", flush=True)
    caption_idx = torch.tensor([uniq.index(c) for c in captions])
    return _Data(
        torch.cat(means), torch.cat(stds), cond, tuple(size), stored, caption_idx, embeds.cpu(), empty.cpu(),
        keep, layouts,
    )  # fmt: skip


def _resolve_base(ref: str, device, dtype):
    from factory.models import ModelError, load_components

    try:
        return load_components(ref, device=device, dtype=dtype)
    except (ModelError, OSError) as e:
        raise TrainError(f"base_model {ref!r} does not resolve: {e}") from None


def _build_provider(cfg: ControlNetTrainConfig, components):
    from factory.conditions import build_condition

    return build_condition(cfg.condition, components)


def train_controlnet(cfg: ControlNetTrainConfig, provider=None) -> Path:
    """Run the training described by ``cfg``; returns the ControlNet folder (``cfg.out``).

    ``provider`` overrides the condition built from ``cfg.condition`` (any object with ``kind``,
    ``channels``, ``signature()`` and ``__call__(samples) -> (B, C, H, W)``).
    """
    from accelerate import Accelerator
    from diffusers import ControlNetModel
    from diffusers.optimization import get_scheduler

    from factory.models import new_controlnet

    t_start = time.perf_counter()
    # the recipe this run records (base model, PCA, layout store) must hold from any directory
    cfg = absolute_paths(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    check_launch(accelerator.num_processes)
    device = accelerator.device
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    out = Path(cfg.out)

    # 1. Check inputs before any step
    try:
        refs = list_samples(cfg.data).refs
    except DataError as e:
        raise TrainError(f"empty or unreadable dataset (data.root={cfg.data.root}): {e}") from None
    if not refs:
        raise TrainError(
            f"empty dataset: no samples under {cfg.data.root} (kind={cfg.data.kind}, split={cfg.data.split}); "
            "fix: point data.root at a dataset folder (e.g. one written by `python -m factory.data.procedural`)"
        )
    # a URI dataset: every rank trains on every image many times, so each node copies the set
    # into its cache once, up front (factory.data.tree; nothing for a local folder)
    fetch_all(refs, cfg.data.storage_options)
    if cfg.resolution is None:
        check_image_sizes(refs)
    components = _resolve_base(cfg.base_model, device, weight_dtype)
    for m in (components.vae, components.unet, components.text_encoder):
        m.requires_grad_(False)
    if provider is None:
        provider = _build_provider(cfg, components)
    if cfg.controlnet_init:
        controlnet = ControlNetModel.from_pretrained(cfg.controlnet_init).to(device)
    else:
        # from_unet draws the new conditioning-embedding weights from the global RNG: seed it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            controlnet = new_controlnet(components, provider.channels).to(device, torch.float32)
    channels = controlnet.config.conditioning_channels
    if provider.channels != channels:
        raise TrainError(
            f"condition {provider.kind!r} has {provider.channels} channels but the ControlNet "
            f"({cfg.controlnet_init or 'new'}) has conditioning_channels={channels}; fix: use a ControlNet "
            "trained for this condition, or unset controlnet_init"
        )

    # 2. Cache latents, conditions, caption embeddings
    data = prepare_data(cfg, refs, components, provider, channels, device)
    scale = components.vae.config.scaling_factor
    sched = components.noise_scheduler

    # 3. Model, optimiser, schedule (accelerate scales the schedule by the process count)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        components.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.steps * accelerator.num_processes,
    )
    controlnet, optimizer, lr_sched = accelerator.prepare(controlnet, optimizer, lr_sched)

    # 4. Resume from the latest complete checkpoint; the logs keep the steps up to it
    ckpt_root = out / "checkpoints"
    step = 0
    found = latest_checkpoint(ckpt_root)
    if found:
        step = found[0]
        accelerator.load_state(str(found[1]))
        accelerator.print(f"resuming from {found[1]} (step {step})")
    log_path = out / "train_log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        truncate_after(log_path, step)
        reset_for_resume(out, step)
    accelerator.wait_for_everyone()  # no process appends to an audit before it is truncated
    rank = accelerator.process_index
    audit = BatchAudit(out, rank)
    accelerator.print(
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type.value}), batch_size "
        f"{cfg.batch_size} per process, {effective_batch_size(cfg, accelerator.num_processes)} samples per step"
    )

    # 5. Loop
    bar = tqdm(
        total=cfg.steps, initial=step, desc="controlnet", disable=not accelerator.is_local_main_process
    )
    t_loop = time.perf_counter()
    steps_run = 0
    while step < cfg.steps:
        losses = []
        used: list[int] = []
        for micro in range(cfg.grad_accum):
            micro_step = step * cfg.grad_accum + micro
            idx = batch_indices(
                len(data), cfg.batch_size, micro_step, rank, accelerator.num_processes, cfg.seed
            )
            used += idx
            with accelerator.accumulate(controlnet):
                loss = _loss(
                    cfg,
                    data,
                    idx,
                    micro_step,
                    accelerator,
                    controlnet,
                    components,
                    sched,
                    scale,
                    weight_dtype,
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(controlnet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        step += 1
        steps_run += 1
        loss_v = float(np.mean(losses))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}")
        audit.record(step, used, [refs[i].key for i in used])
        if accelerator.is_main_process:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss_v, "lr": lr_sched.get_last_lr()[0]}) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(accelerator, ckpt_root, step, cfg.keep_checkpoints)
        v = cfg.validation.every
        if accelerator.is_main_process and v >= 0 and ((v > 0 and step % v == 0) or step == cfg.steps):
            validation_grid(
                cfg,
                data,
                components,
                accelerator.unwrap_model(controlnet),
                out / "validation" / f"step-{step:07d}.png",
            )
            controlnet.train()
    bar.close()
    loop_s = time.perf_counter() - t_loop

    # 6. Save the ControlNet and what it was trained on
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_result(
            cfg,
            accelerator.unwrap_model(controlnet),
            components,
            provider,
            refs,
            step,
            out,
            data.layouts,
            {
                "type": accelerator.distributed_type.value,
                "num_processes": accelerator.num_processes,
                "batch_size_per_process": cfg.batch_size,
                "grad_accum": cfg.grad_accum,
                "effective_batch_size": effective_batch_size(cfg, accelerator.num_processes),
            },
            {
                "total_s": round(time.perf_counter() - t_start, 1),
                "loop_s": round(loop_s, 1),
                "steps_run_this_call": steps_run,
                "s_per_step": round(loop_s / steps_run, 3) if steps_run else None,
            },
        )
    accelerator.wait_for_everyone()
    return out


def _loss(
    cfg,
    data: _Data,
    idx: list[int],
    micro_step: int,
    accelerator,
    controlnet,
    components,
    sched,
    scale,
    weight_dtype,
):
    """Denoising loss of the frozen U-Net steered by the ControlNet on the samples ``idx``.

    The target is the base schedule's prediction type; noise, timesteps and dropout are drawn
    from (seed, ``micro_step``, process), so a resumed run draws what an uninterrupted one did.
    """
    from factory.models import denoising_target

    device = accelerator.device
    g = _seeded(cfg.seed, micro_step, accelerator.process_index, 1)
    idx_t = torch.tensor(idx)
    z0 = (data.mean[idx_t] + data.std[idx_t] * torch.randn(data.mean[idx_t].shape, generator=g)) * scale
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
    zt = sched.add_noise(z0, noise, t)
    target = denoising_target(sched, z0, noise, t)  # the base model's own objective
    cond = data.condition(idx_t)
    drop_c = torch.rand(len(idx), generator=g) < cfg.condition_dropout
    cond[drop_c] = 0.0
    enc = data.embeds[data.caption_idx[idx_t]].clone()
    drop_t = torch.rand(len(idx), generator=g) < cfg.caption.dropout
    enc[drop_t] = data.empty_embed
    zt, t, cond, enc, target = (x.to(device) for x in (zt, t, cond, enc, target))
    down, mid = controlnet(
        zt.to(weight_dtype),
        t,
        encoder_hidden_states=enc.to(weight_dtype),
        controlnet_cond=cond.to(weight_dtype),
        return_dict=False,
    )
    pred = components.unet(
        zt.to(weight_dtype),
        t,
        encoder_hidden_states=enc.to(weight_dtype),
        down_block_additional_residuals=[r.to(weight_dtype) for r in down],
        mid_block_additional_residual=mid.to(weight_dtype),
    ).sample
    return F.mse_loss(pred.float(), target.float())


def save_checkpoint(accelerator, ckpt_root: Path, step: int, keep: int) -> Path:
    """accelerate state into ``.tmp-checkpoint-N``, then one ``os.replace``: never half-written."""
    final = ckpt_root / f"checkpoint-{step:07d}"
    tmp = ckpt_root / f".tmp-checkpoint-{step:07d}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "time": time.time()}))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        done = sorted((int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def controlnet_pipeline(components, controlnet):
    """A stock StableDiffusionControlNetPipeline (DDIM) around the base components."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    return StableDiffusionControlNetPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        controlnet=controlnet,
        scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def sample_images(
    pipe, cond: torch.Tensor, prompt: str, seeds: Sequence[int], steps: int, guidance: float
) -> np.ndarray:
    """uint8 (B,H,W,3) samples for one prompt, one seeded generator per condition."""
    b, _, h, w = cond.shape
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    imgs = pipe(
        [prompt] * b,
        image=cond.to(pipe.device, pipe.controlnet.dtype),
        height=h,
        width=w,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
        output_type="np",
    ).images
    return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)


def validation_grid(cfg: ControlNetTrainConfig, data: _Data, components, controlnet, path: Path) -> Path:
    """Rows: one per reference image: reference | condition | one sample per validation prompt."""
    from factory.viz import condition_to_rgb, save_grid, short_labels

    v = cfg.validation
    controlnet.eval()
    n = min(v.num_references, len(data.samples))
    cond = data.condition(torch.arange(n))
    pipe = controlnet_pipeline(components, controlnet)
    pipe.set_progress_bar_config(disable=True)
    seeds = [v.seed + i for i in range(n)]
    # minutes on a CPU: one bar step per prompt, each sampling every reference
    prompts = tqdm(v.prompts, desc=f"validation grid ({n} refs, {v.steps} steps)", unit="prompt", leave=False)
    samples = [sample_images(pipe, cond, p, seeds, v.steps, v.guidance) for p in prompts]
    rows = [[data.samples[i].image, condition_to_rgb(cond[i]), *(s[i] for s in samples)] for i in range(n)]
    return save_grid(rows, path, col_labels=["reference", "condition", *short_labels(v.prompts)])


def save_result(
    cfg,
    controlnet,
    components,
    provider,
    refs,
    step: int,
    out: Path,
    layouts: dict | None,
    distributed: dict,
    timings: dict,
) -> None:
    """``save_pretrained`` into a temporary folder, then move its files into ``out`` (+ JSON)."""
    from factory.models import content_hash

    tmp = out / ".tmp-controlnet"
    if tmp.exists():
        shutil.rmtree(tmp)
    controlnet.save_pretrained(tmp, safe_serialization=True)
    signature = provider.signature() if hasattr(provider, "signature") else {}
    meta = {
        "base_model": {"ref": components.ref, "content_hash": components.content_hash},
        "condition": {"kind": provider.kind, "channels": provider.channels, "signature": signature},
        "pca_artifact_hash": pca_file_hash(cfg.condition.layout.pca)
        if getattr(cfg.condition, "kind", None) == "layout"
        else None,
        "layouts": layouts,  # layout condition: how many were read from the store, how many computed
        "controlnet_content_hash": content_hash(controlnet),
        "steps": step,
        "distributed": distributed,  # accelerate's process count and the samples per step
        "data": {**to_dict(cfg.data), "n_samples": len(refs)},
        "caption": to_dict(cfg.caption),
        "config": to_dict(cfg)
        | {"condition": to_dict(cfg.condition) if not isinstance(cfg.condition, dict) else cfg.condition},
        "timings": timings,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (tmp / RESULT_FILE).write_text(json.dumps(meta, indent=2, default=str))
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)
    tmp.rmdir()
    print(f"saved the ControlNet and {RESULT_FILE} to {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m factory.train.controlnet",
        description="Train a ControlNet on (image, condition, caption) triples.",
        epilog=config_help(ControlNetTrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", type=Path, default=None, help="YAML with ControlNetTrainConfig fields")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 data.limit=8")
    args = ap.parse_args(argv)
    cfg = load_config(ControlNetTrainConfig, args.config, args.overrides, config_dir="configs/train")
    out = train_controlnet(cfg)
    print(json.dumps(json.loads((out / RESULT_FILE).read_text())["timings"]))
    return 0


RESUME = "rerun the same command to resume from the latest complete checkpoint in <out>/checkpoints"

if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=RESUME))
