"""The Synthesizer: (reference, variant, seed, condition) -> image, batch-invariant.

It runs its own denoising loop on the diffusers components (text encoder, U-Net, ControlNet,
scheduler, VAE) rather than ``StableDiffusionControlNetPipeline``, for three reasons that the
factory depends on:

- **Batch invariance.** Each sample's initial noise is drawn from its own ``torch.Generator``
  seeded with ``WorkItem.seed`` (always on the CPU in float32, then moved), and only
  deterministic samplers are offered (DDIM with eta=0, UniPC, Euler without churn), so the loop
  never draws shared noise. A sample is then the same whatever its batch, actor or order - which
  is what lets an out-of-memory retry at half the batch, or a resumed job, reproduce it.
- **NaN detection.** The decoded image is checked in float before it is clamped and cast to
  uint8 (where NaN would silently become 0 = a black image). A non-finite sample comes back
  with ``image=None`` and ``error`` set, never as pixels.
- **Visible knobs.** Classifier-free guidance, ControlNet conditioning scale and the
  control-guidance window, and the number of layout components kept, are each a few lines in
  the loop below.

Conditions come from ``factory.conditions`` (float32 [B, C, H, W] at pixel resolution); the
layout is the reference's, so the reference's labels are reused for the synthetic image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from factory.conditions import ConditionConfig
from factory.config import check
from factory.data.sample import SampleRef
from factory.synth.variants import Variant, synthetic_key

if TYPE_CHECKING:  # imported lazily at run time: the models are only needed in setup()
    from diffusers import ControlNetModel

    from factory.models import SDComponents

SCHEDULERS = {"ddim": DDIMScheduler, "unipc": UniPCMultistepScheduler, "euler": EulerDiscreteScheduler}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SynthConfig:
    """How images are synthesised. Validated on construction; errors name the field.

    base_model: a model reference (``tiny``, ``sd15-arch``, a diffusers folder, a hub id); None =
      the base model the ControlNet's recipe records (``tiny`` when there is no ControlNet).
    controlnet: the folder of a trained ControlNet; None builds an untrained one from the U-Net
      (tests and throughput benchmarks only: its residuals start at zero). A folder written by
      ``factory.train.controlnet`` records its recipe (base model, condition, PCA hash):
      ``from_config`` takes it as the default and refuses a base model or PCA that differs.
    condition: how conditions are computed from the reference (``factory.conditions``); None =
      the ControlNet's recorded condition, or none when the caller passes condition tensors
      (e.g. stored layouts) to ``__call__``.
    condition_channels: channels of an untrained ControlNet (used only when controlnet is None
      and no condition provider is given; 20 = the neural layout).
    layout_components: keep the first N channels of the condition and zero the rest (the
      paper's ablation on the number of PCA components); None keeps all.
    height / width: generation size in pixels; None = the condition's (the reference's) size.
      The condition is resized bilinearly when they differ; labels are never resized.
    guidance_scale: classifier-free guidance; <= 1 turns CFG off (one U-Net pass per step).
    control_guidance_start / end: fraction of the steps during which the ControlNet acts.
    batch_size: samples per batch (the job lowers it after an out-of-memory error).
    micro_batch: samples per model call inside a batch. Kernels do not compute a batch's rows
      independently of their position (a CPU GEMM's tail rows use another kernel: ~1e-6
      differences), so only a fixed micro-batch makes a sample bit-identical whatever its
      batch, order or actor. None = 1 on a CPU (costs nothing there: it is compute-bound) and
      the whole batch on a GPU (throughput; samples then agree to ~1e-6, uint8 within 1 level).
    compile: torch.compile the U-Net, the ControlNet and the VAE decoder (GPU throughput; the
      first batch pays the compilation). compile_mode "reduce-overhead" adds CUDA graphs.
    channels_last: NHWC memory layout for the U-Net, ControlNet and VAE (cuDNN's fast bf16
      convolutions are NHWC); values and state dicts are unchanged.
    """

    base_model: str | None = None
    controlnet: str | None = None
    condition: ConditionConfig | None = None
    condition_channels: int = 20
    steps: int = 20
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    layout_components: int | None = None
    height: int | None = None
    width: int | None = None
    scheduler: Literal["ddim", "unipc", "euler"] = "unipc"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    batch_size: int = 4
    micro_batch: int | None = None
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    channels_last: bool = False

    def __post_init__(self) -> None:
        check(
            self.base_model is None or bool(self.base_model),
            "base_model",
            "is empty (fix: e.g. 'tiny', a diffusers folder, or null for the ControlNet's recorded base model)",
        )
        check(
            self.condition_channels >= 1, "condition_channels", f"must be >= 1, got {self.condition_channels}"
        )
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.steps <= 1000, "steps", f"must be <= 1000 (the training schedule), got {self.steps}")
        check(self.guidance_scale >= 0, "guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        check(
            self.controlnet_conditioning_scale >= 0,
            "controlnet_conditioning_scale",
            f"must be >= 0, got {self.controlnet_conditioning_scale}",
        )
        check(
            0.0 <= self.control_guidance_start < 1.0,
            "control_guidance_start",
            f"must be in [0, 1), got {self.control_guidance_start}",
        )
        check(
            self.control_guidance_start < self.control_guidance_end <= 1.0,
            "control_guidance_end",
            f"must be in (control_guidance_start={self.control_guidance_start}, 1], "
            f"got {self.control_guidance_end}",
        )
        if self.layout_components is not None:
            check(
                self.layout_components >= 1,
                "layout_components",
                f"must be >= 1, got {self.layout_components}",
            )
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None:
                check(v >= 8 and v % 8 == 0, name, f"must be a positive multiple of 8, got {v}")
        check(
            (self.height is None) == (self.width is None), "height", "set both height and width, or neither"
        )
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        if self.micro_batch is not None:
            check(self.micro_batch >= 1, "micro_batch", f"must be >= 1 or null, got {self.micro_batch}")
        check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            "device",
            f"must be 'auto', 'cpu', 'cuda[:i]' or 'mps', got {self.device!r}",
        )


@dataclass(frozen=True)
class WorkItem:
    """One image to make: which reference, which variant, which seed (``sample_seed``)."""

    ref: SampleRef
    variant: Variant
    seed: int

    @property
    def key(self) -> str:
        return synthetic_key(self.ref.key, self.variant.name)


@dataclass
class SynthOutput:
    """The result for one WorkItem. ``image`` is None exactly when ``error`` is set.

    ``nonfinite``: number of NaN/inf values in the float decoded image (checked before the uint8
    cast). ``timings``: this sample's share of the batch's seconds per stage, plus the batch size.
    ``size``: (height, width) of the generated image (may be smaller than the labels).
    """

    key: str
    source_key: str
    variant: str
    image: np.ndarray | None
    error: str | None
    seed: int
    prompt: str
    negative_prompt: str
    timings: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)
    nonfinite: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def meta(self) -> dict[str, Any]:
        """JSON-safe fields for the sample's metadata (everything but the pixels)."""
        return {
            "key": self.key,
            "source_key": self.source_key,
            "variant": self.variant,
            "seed": self.seed,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "size": list(self.size),
            "nonfinite": self.nonfinite,
            "error": self.error,
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
        }


class Synthesizer:
    """Generates images for WorkItems with one set of models loaded once (``setup``).

    ``components``, ``controlnet`` and ``condition`` (a ``ConditionProvider``) may be given
    ready-made (tests, or a job that shares them); whatever is missing is loaded in ``setup``
    from the config.
    """

    def __init__(
        self,
        cfg: SynthConfig,
        components: SDComponents | None = None,
        controlnet: ControlNetModel | None = None,
        condition: Any | None = None,
    ):
        self.cfg = cfg
        self.components = components
        self.controlnet = controlnet
        self.condition = condition
        self._ready = False
        self._last_conditions: dict[str, torch.Tensor] = {}  # per reference, from the last call

    @classmethod
    def from_config(cls, cfg: SynthConfig, *, seed: int = 0) -> Synthesizer:
        """The Synthesizer a config describes, models loaded: components in ``cfg.dtype``, the
        ControlNet and the condition provider, with the ControlNet's recipe as the default.

        ``seed`` initialises an untrained ControlNet (``controlnet: null``) the same way in every
        process, so every worker has the same weights (same content hash in the metadata).
        """
        synth = cls(resolve_recipe(cfg))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            synth.setup()
        return synth

    # ------------------------------------------------------------------ setup
    def setup(self) -> Synthesizer:
        """Load the models once (per actor). Idempotent."""
        if self._ready:
            return self
        from factory.models import (
            compile_for_inference,
            load_components,
            load_controlnet,
            new_controlnet,
            resolve_device,
        )

        device = resolve_device(self.cfg.device)
        dtype = None if self.cfg.dtype == "auto" else DTYPES[self.cfg.dtype]
        if self.components is None:
            self.components = load_components(self.cfg.base_model or "tiny", device=device, dtype=dtype)
        c = self.components
        if self.condition is None and self.cfg.condition is not None:
            from factory.conditions import build_condition

            self.condition = build_condition(self.cfg.condition, c)
        if self.controlnet is None:
            if self.cfg.controlnet is not None:
                self.controlnet = load_controlnet(self.cfg.controlnet, device=c.device, dtype=c.dtype)
            else:
                channels = getattr(self.condition, "channels", None) or self.cfg.condition_channels
                self.controlnet = new_controlnet(c, channels)
        # diffusers' ModelMixin.to is a functools.wraps of Module.to, which typeshed types as unbound
        self.controlnet.to(c.device, c.dtype).eval()  # type: ignore[arg-type]
        wanted = int(self.controlnet.config["conditioning_channels"])
        if self.condition is not None and self.condition.channels != wanted:
            raise ValueError(
                f"condition {self.condition.kind!r} has {self.condition.channels} channels but the ControlNet "
                f"expects {wanted} (fix: use the condition the ControlNet was trained with)"
            )
        if self.cfg.channels_last:
            for module in (c.unet, self.controlnet, c.vae):
                module.to(memory_format=torch.channels_last)  # type: ignore[call-arg]  # as above
        self._unet = c.unet
        self._controlnet = self.controlnet
        self._vae_decoder = c.vae.decoder
        if self.cfg.compile:
            self._unet = compile_for_inference(c.unet, self.cfg.compile_mode)
            self._controlnet = compile_for_inference(self.controlnet, self.cfg.compile_mode)
            # the decoder runs once per batch: CUDA graphs would only hold memory
            self._vae_decoder = compile_for_inference(c.vae.decoder)
        self._ready = True
        return self

    @property
    def device(self) -> torch.device:
        assert self.components is not None, "call setup() first"
        return self.components.device

    @property
    def dtype(self) -> torch.dtype:
        assert self.components is not None, "call setup() first"
        return self.components.dtype

    @property
    def needs_labels(self) -> bool:
        """Whether the condition reads the reference's labels (the GT-semseg baseline does)."""
        return bool(self.condition is not None and self.condition.needs_labels)

    def preview(self, sample: Any) -> np.ndarray | None:
        """The reference's condition as an RGB picture (first three channels), for contact sheets:
        the one the last call computed for it when there is one (no second computation)."""
        if self.condition is None:
            return None
        from factory.viz import condition_to_rgb

        cond = self._last_conditions.get(sample.key)
        return condition_to_rgb((cond if cond is not None else self.condition([sample]))[0])

    def signature(self) -> dict[str, Any]:
        """What produced an image, for the sample metadata: model refs + content hashes, sampler."""
        from factory.models import content_hash

        self.setup()
        c = self.components
        assert c is not None and self.controlnet is not None, "setup() loads the models"
        cfg = self.cfg
        return {
            "base_model": {"ref": c.ref, "content_hash": c.content_hash},
            "controlnet": {
                "ref": cfg.controlnet or "untrained",
                "content_hash": content_hash(self.controlnet),
                "conditioning_channels": int(self.controlnet.config["conditioning_channels"]),
            },
            "condition": self.condition.signature()
            if self.condition is not None and hasattr(self.condition, "signature")
            else None,
            "sampler": {
                "scheduler": cfg.scheduler,
                "steps": cfg.steps,
                "guidance_scale": cfg.guidance_scale,
                "controlnet_conditioning_scale": cfg.controlnet_conditioning_scale,
                "control_guidance_start": cfg.control_guidance_start,
                "control_guidance_end": cfg.control_guidance_end,
                "layout_components": cfg.layout_components,
                "micro_batch": cfg.micro_batch
                if cfg.micro_batch is not None
                else ("1 (cpu)" if self.device.type == "cpu" else "batch"),
            },
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------------ helpers
    def make_scheduler(self):
        """A fresh scheduler (they hold per-run state) built from the base model's schedule."""
        cls = SCHEDULERS[self.cfg.scheduler]
        kwargs = {"eta": 0.0} if cls is DDIMScheduler else {}
        sched = cls.from_config(self.components.noise_scheduler.config)
        sched.set_timesteps(self.cfg.steps, device=self.device)
        return sched, kwargs

    def control_keep(self, n_steps: int) -> list[float]:
        """1.0 for the steps inside [control_guidance_start, control_guidance_end], else 0.0."""
        s, e = self.cfg.control_guidance_start, self.cfg.control_guidance_end
        return [0.0 if (i / n_steps < s or (i + 1) / n_steps > e) else 1.0 for i in range(n_steps)]

    def prepare_condition(self, condition: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Keep the first ``layout_components`` channels (zero the rest), resize to ``size``."""
        assert self.controlnet is not None, "call setup() first"
        channels = int(self.controlnet.config["conditioning_channels"])
        if condition.ndim != 4 or condition.shape[1] != channels:
            raise ValueError(
                f"condition has shape {tuple(condition.shape)}; the ControlNet expects [B, {channels}, H, W] "
                "(fix: use the condition the ControlNet was trained with)"
            )
        cond = condition.to(torch.float32)
        k = self.cfg.layout_components
        if k is not None:
            if k > channels:
                raise ValueError(f"layout_components={k} but the condition has only {channels} channels")
            cond = cond.clone()
            cond[:, k:] = 0.0
        if tuple(cond.shape[-2:]) != tuple(size):
            cond = F.interpolate(cond, size=size, mode="bilinear", align_corners=False)
        return cond.to(self.device, self.dtype)

    def generation_size(self, condition: torch.Tensor) -> tuple[int, int]:
        """(H, W) to generate at; must map to a latent grid the U-Net can halve enough times."""
        size = (
            (self.cfg.height, self.cfg.width)
            if self.cfg.height
            else tuple(int(s) for s in condition.shape[-2:])
        )
        assert self.components is not None, "call setup() first"
        multiple = self.components.vae_scale_factor * 2 ** (
            len(self.components.unet.config["block_out_channels"]) - 1
        )
        if size[0] % multiple or size[1] % multiple:
            raise ValueError(
                f"generation size {size[0]}x{size[1]} is not a multiple of {multiple} (VAE stride x U-Net "
                "downsamplings); fix: set synth.height/width to multiples of it"
            )
        return size  # type: ignore[return-value]

    def initial_latents(self, seeds: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """One generator per sample, on the CPU in float32: identical noise on any device/batch."""
        assert self.components is not None, "call setup() first"
        f = self.components.vae_scale_factor
        shape = (1, self.components.unet.config["in_channels"], size[0] // f, size[1] // f)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.cat(noise).to(self.device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``vae.decode(latents / scaling_factor).sample``, spelt out so the decoder can be compiled."""
        assert self.components is not None, "call setup() first"
        vae = self.components.vae
        z = latents.to(self.dtype) / vae.config["scaling_factor"]
        if self.cfg.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        post_quant_conv = getattr(vae, "post_quant_conv", None)
        if post_quant_conv is not None:
            z = post_quant_conv(z)
        return self._vae_decoder(z)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        from factory.models import encode_prompts

        assert self.components is not None, "call setup() first"
        return encode_prompts(self.components, prompts).to(self.dtype)

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        items: Sequence[WorkItem],
        condition: torch.Tensor | None = None,
        *,
        samples: Sequence[Any] | None = None,
        batch_size: int | None = None,
    ) -> list[SynthOutput]:
        """Synthesise ``items`` in chunks of ``batch_size`` (default ``cfg.batch_size``).

        condition: float32 [len(items), C, H, W] at pixel resolution, row i for item i. When
        None, it is computed by the condition provider from ``samples`` (loaded from the refs
        when not given). Items that cannot be prepared - a reference that does not load, a
        condition that cannot be computed, a prompt edit that does not fit the reference's
        caption - come back with ``error`` set (``data: ...``, ``condition: ...``,
        ``prompt: ...``); the rest still run. Outputs are in the order of ``items``.
        """
        self.setup()
        items = list(items)
        if not items:
            return []
        failed: dict[int, SynthOutput] = {}
        if condition is None:
            condition, failed = self._conditions_for(items, samples)
        elif condition.shape[0] != len(items):
            raise ValueError(f"condition has {condition.shape[0]} rows for {len(items)} items")
        ok = [i for i in range(len(items)) if i not in failed]
        bs = batch_size or self.cfg.batch_size
        made: dict[int, SynthOutput] = dict(failed)
        for start in range(0, len(ok), bs):
            idx = ok[start : start + bs]
            rows = condition[start : start + bs]  # condition rows follow ``ok``
            for i, o in zip(idx, self._run_batch([items[i] for i in idx], rows)):
                made[i] = o
        return [made[i] for i in range(len(items))]

    def _conditions_for(
        self, items: list[WorkItem], samples: Sequence[Any] | None
    ) -> tuple[torch.Tensor, dict[int, SynthOutput]]:
        """Conditions for the items that load and condition cleanly (rows in item order, the
        failed items skipped), and an error output for each item that does not."""
        if self.condition is None:
            raise ValueError("no condition given and no condition provider configured (fix: pass condition=)")
        failed: dict[int, SynthOutput] = {}
        loaded: dict[int, Any] = {}
        if samples is not None:
            if len(samples) != len(items):
                raise ValueError(f"{len(samples)} samples for {len(items)} items")
            loaded = dict(enumerate(samples))
        else:
            from factory.data.cityscapes import load_sample

            for i, it in enumerate(items):
                try:
                    loaded[i] = load_sample(it.ref, labels=self.needs_labels)
                except (ValueError, OSError) as e:  # DataError is a ValueError
                    failed[i] = self._failed(it, f"data: {e}", "", it.variant.negative_prompt)
        order = sorted(loaded)
        # The variants of one reference share its condition (conditions are batch-invariant):
        # compute it once per distinct reference.
        first: dict[str, int] = {}
        for i in order:
            first.setdefault(items[i].ref.key, i)
        per_ref: dict[str, torch.Tensor] = {}
        problems: dict[str, Exception] = {}
        try:
            if first:
                computed = self.condition([loaded[i] for i in first.values()])
                per_ref = {key: computed[j : j + 1] for j, key in enumerate(first)}
        except torch.OutOfMemoryError:
            raise  # a resource problem, not the sample's: the job halves its batch and retries
        except (ValueError, OSError, RuntimeError):  # isolate the reference(s) that break it
            for key, i in first.items():
                try:
                    per_ref[key] = self.condition([loaded[i]])
                except torch.OutOfMemoryError:
                    raise
                except (ValueError, OSError, RuntimeError) as e:
                    problems[key] = e
        self._last_conditions = per_ref
        rows = []
        for i in order:
            key = items[i].ref.key
            if key in per_ref:
                rows.append(per_ref[key])
            else:
                failed[i] = self._failed(
                    items[i], f"condition: {problems[key]}", "", items[i].variant.negative_prompt
                )
        cond = torch.cat(rows) if rows else torch.zeros(0)
        return cond, failed

    def micro_batch(self) -> int:
        """Samples per model call: ``cfg.micro_batch``, or 1 on a CPU and everything on a GPU."""
        if self.cfg.micro_batch is not None:
            return self.cfg.micro_batch
        return 1 if self.device.type == "cpu" else 1 << 30

    def _chunks(self, n: int) -> list[slice]:
        mb = self.micro_batch()
        return [slice(i, min(i + mb, n)) for i in range(0, n, mb)]

    def _predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: tuple[torch.Tensor, torch.Tensor | None],
        control: torch.Tensor,
        scale: float,
        scheduler: Any,
    ) -> torch.Tensor:
        """Guided noise prediction for every sample, run in micro-batches.

        Each micro-batch is [uncond rows, cond rows] of the same samples, so a sample's model
        inputs never depend on the other samples of the batch.
        """
        cond_embeds, uncond_embeds = embeds
        out = []
        graphs = self.cfg.compile and self.cfg.compile_mode == "reduce-overhead"
        for sl in self._chunks(latents.shape[0]):
            if graphs:  # the previous call's graph outputs have been consumed: reuse its buffers
                torch.compiler.cudagraph_mark_step_begin()
            lat = scheduler.scale_model_input(latents[sl], t).to(self.dtype)
            if self.cfg.channels_last:
                lat = lat.contiguous(memory_format=torch.channels_last)
            ctrl, emb = control[sl], cond_embeds[sl]
            if uncond_embeds is not None:  # classifier-free guidance: [uncond; cond]
                lat, ctrl, emb = (
                    torch.cat([lat, lat]),
                    torch.cat([ctrl, ctrl]),
                    torch.cat([uncond_embeds[sl], emb]),
                )
            down, mid = None, None
            if scale > 0:
                down, mid = self._controlnet(
                    lat,
                    t,
                    encoder_hidden_states=emb,
                    controlnet_cond=ctrl,
                    conditioning_scale=scale,
                    return_dict=False,
                )
            pred = self._unet(
                lat,
                t,
                encoder_hidden_states=emb,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0].float()
            if uncond_embeds is not None:
                uncond, cond = pred.chunk(2)
                pred = uncond + self.cfg.guidance_scale * (cond - uncond)
            out.append(pred)
        return torch.cat(out)

    @torch.no_grad()
    def _run_batch(self, items: list[WorkItem], condition: torch.Tensor) -> list[SynthOutput]:
        t0 = time.perf_counter()
        cfg = self.cfg
        # 1. Prompts (per-sample captions re-edited); items whose prompt fails are reported.
        results: list[SynthOutput | None] = [None] * len(items)
        prompts: dict[int, tuple[str, str]] = {}
        for i, it in enumerate(items):
            try:
                prompts[i] = (it.variant.prompt_for(it.ref.meta.get("caption")), it.variant.negative_prompt)
            except ValueError as e:
                results[i] = self._failed(it, f"prompt: {e}", "", it.variant.negative_prompt)
        run = sorted(prompts)
        if not run:
            return [r for r in results if r is not None]
        n = len(run)
        size = self.generation_size(condition)
        control = self.prepare_condition(condition[run], size)

        # 2. Text embeddings (negative prompts only with classifier-free guidance).
        do_cfg = cfg.guidance_scale > 1.0
        chunks = self._chunks(n)
        cond_embeds = torch.cat([self.encode_text([prompts[i][0] for i in run[sl]]) for sl in chunks])
        uncond_embeds = None
        if do_cfg:
            uncond_embeds = torch.cat([self.encode_text([prompts[i][1] for i in run[sl]]) for sl in chunks])
        t1 = time.perf_counter()

        # 3. Per-sample noise and a fresh scheduler.
        scheduler, step_kwargs = self.make_scheduler()
        latents = self.initial_latents([items[i].seed for i in run], size) * scheduler.init_noise_sigma
        keep = self.control_keep(len(scheduler.timesteps))

        # 4. Denoising loop (latents kept in float32; models run in the model dtype).
        for step, t in enumerate(scheduler.timesteps):
            scale = cfg.controlnet_conditioning_scale * keep[step]
            noise_pred = self._predict_noise(
                latents, t, (cond_embeds, uncond_embeds), control, scale, scheduler
            )
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()

        # 5. Decode, check finiteness in float (NaN would become 0 = black in uint8), convert.
        decoded = torch.cat([self.decode_latents(latents[sl]).float() for sl in chunks])
        nonfinite = (~torch.isfinite(decoded)).flatten(1).sum(1).cpu().tolist()
        pixels = (
            ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        )
        t3 = time.perf_counter()

        timings = {
            "text_s": (t1 - t0) / n,
            "denoise_s": (t2 - t1) / n,
            "decode_s": (t3 - t2) / n,
            "total_s": (t3 - t0) / n,
            "batch_size": float(n),
        }
        for j, i in enumerate(run):
            it = items[i]
            bad = int(nonfinite[j])
            err = None
            if bad:
                err = (
                    f"nonfinite: {bad} of {decoded[j].numel()} decoded values are NaN/inf "
                    "(fix: float32/bfloat16 instead of float16, or a retry with a new seed)"
                )
            results[i] = SynthOutput(
                key=it.key,
                source_key=it.ref.key,
                variant=it.variant.name,
                image=None if bad else np.ascontiguousarray(pixels[j]),
                error=err,
                seed=it.seed,
                prompt=prompts[i][0],
                negative_prompt=prompts[i][1],
                timings=dict(timings),
                size=size,
                nonfinite=bad,
            )
        return [r for r in results if r is not None]

    @staticmethod
    def _failed(it: WorkItem, error: str, prompt: str, negative: str) -> SynthOutput:
        return SynthOutput(
            key=it.key,
            source_key=it.ref.key,
            variant=it.variant.name,
            image=None,
            error=error,
            seed=it.seed,
            prompt=prompt,
            negative_prompt=negative,
        )


def resolve_recipe(cfg: SynthConfig) -> SynthConfig:
    """``cfg`` with the ControlNet's recorded recipe filled in, checked against what it overrides.

    The recipe fixes the base model, the condition kind and its settings, and (for a layout) the
    PCA artifact: a config that leaves them unset gets the recipe's; one that names another base
    model (by content) or another PCA (by file hash) is refused with an error naming both. Other
    fields (sampler, resolution, dtype, compile flags) stay the config's.
    """
    import dataclasses

    from factory.config import from_dict
    from factory.train.recipe import ControlNetRecipe, RecipeError, pca_file_hash

    if cfg.controlnet is None:
        return cfg
    recipe = ControlNetRecipe.load(cfg.controlnet)
    if recipe is None:
        return cfg
    condition = cfg.condition
    if condition is None:
        condition = from_dict(ConditionConfig, recipe.condition)
    elif condition.kind != recipe.condition.get("kind"):
        raise RecipeError(
            f"synth.condition.kind {condition.kind!r} but the ControlNet {recipe.folder} was trained on "
            f"{recipe.condition.get('kind')!r} (fix: drop synth.condition to use the recorded one)"
        )
    if condition.kind == "layout" and recipe.pca_hash is not None:
        given = pca_file_hash(condition.layout.pca)
        if given != recipe.pca_hash:
            raise RecipeError(
                f"synth.condition.layout.pca {condition.layout.pca} (sha256 {given}) is not the PCA the "
                f"ControlNet {recipe.folder} was trained with (sha256 {recipe.pca_hash}, recorded as "
                f"{recipe.condition.get('layout', {}).get('pca')}); a layout projected by another PCA is "
                "another coordinate system (fix: drop synth.condition.layout.pca, or retrain the ControlNet)"
            )
    base = cfg.base_model or recipe.base_model_ref
    if base != recipe.base_model_ref and recipe.base_model_hash is not None:
        from factory.models import load_components

        given_hash = load_components(base).content_hash
        if given_hash != recipe.base_model_hash:
            raise RecipeError(
                f"synth.base_model {base!r} (content hash {given_hash}) is not the base model the ControlNet "
                f"{recipe.folder} was trained on ({recipe.base_model_ref!r}, content hash "
                f"{recipe.base_model_hash}); fix: drop synth.base_model to use the recorded one"
            )
    return dataclasses.replace(cfg, base_model=base, condition=condition)


__all__ = ["DTYPES", "SCHEDULERS", "SynthConfig", "SynthOutput", "Synthesizer", "WorkItem", "resolve_recipe"]
