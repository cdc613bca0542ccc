"""Feature backbones: an image batch in [-1, 1] -> a dense feature map (B, C, h, w).

``SDUNetBackbone`` implements ../shared/NEURAL_LAYOUT.md exactly: the decoder hidden states
*entering* decoder layers 2, 5 and 8 (by position; for SD 1.5 ``up_blocks[0].resnets[1]``,
``up_blocks[1].attentions[1]``, ``up_blocks[2].attentions[1]``), taken before the skip
concatenation, from one U-Net forward at t = 100 on the posterior-mean latent noised with one
fixed seed-42 Gaussian tensor, with the empty prompt. The forward stops after the last hooked
module.

The rest answer the questions the paper's Table 1 and our offline ablation ask of it, each with
the same PCA and ControlNet after it (``layout.backbone`` picks one):

- ``Dinov2Backbone`` (``dinov2``), ``DinoBackbone`` (``dino``), ``ClipBackbone`` (``clip``):
  Table 1's other foundation models - patch tokens of one ViT forward laid out on the patch
  grid (``ViTPatchBackbone``: their one shared home), each model's own input normalisation.
- ``VAELatentBackbone`` (``vae-latent``): the model's VAE latent alone - is a U-Net needed?
- ``RandomUNetBackbone`` (``sd-unet-random``): the sd-unet hooks on a U-Net re-initialised
  from its config with a fixed seed - do pretrained features matter?

``LatentEncoder`` is the image -> posterior-mean latent step that sd-unet, sd-unet-random and
vae-latent share. Adding a backbone is a new class with ``name``, ``channels``, ``signature()``
(everything that changes its features: a PCA fitted on one signature is refused for another)
and ``__call__``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F

from factory.models import SDComponents, compile_for_inference, content_hash, encode_prompts, resolve_device

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel


class LayoutError(ValueError):
    """A layout cannot be computed or applied as asked. The message names the cause and the fix."""


@runtime_checkable
class Backbone(Protocol):
    """Image batch (B, 3, H, W) in [-1, 1] -> dense features (B, C, h, w) float32.

    ``signature()`` is everything that changes the features (model weights, layers, timestep,
    noise, prompt): a PCA fitted on one signature is refused for another.
    """

    name: str
    channels: int

    def signature(self) -> dict[str, Any]: ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def run_fixed_batches(fn, images: torch.Tensor, micro_batch: int) -> torch.Tensor:
    """``fn`` on chunks of exactly ``micro_batch`` images (the last padded by repeating its last image).

    Kernels may pick different algorithms for different batch sizes, so an image's features could
    differ in the last bits with the batch it came in. With one fixed batch shape they depend on
    the image alone: layouts are identical whatever the batch composition or number of workers.
    """
    outs = []
    for start in range(0, images.shape[0], micro_batch):
        chunk = images[start : start + micro_batch]
        n = chunk.shape[0]
        if n < micro_batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(micro_batch - n, *chunk.shape[1:])])
        outs.append(fn(chunk)[:n])
    return torch.cat(outs)


class _StopForward(Exception):
    """Raised from the last feature hook: the rest of the U-Net is not needed."""


def decoder_layer_modules(unet: UNet2DConditionModel) -> list[tuple[str, torch.nn.Module]]:
    """Entry ``p`` = (path, module) whose forward output is the hidden state entering decoder layer p.

    Decoder layers are counted like LDM's ``output_blocks``: every resnet (+ its attention) of
    every up block, in execution order. The state entering layer 0 is the mid block's output;
    the state entering layer p > 0 is the output of layer p - 1: its attention if it has one,
    else its resnet - or the block's upsampler when layer p - 1 closes an upsampling block.
    Hooking these outputs gives the state before the skip-connection concatenation.
    """
    entries: list[tuple[str, torch.nn.Module]] = [("mid_block", unet.mid_block)]
    block: Any  # an up block (its class depends on the config): .resnets, .upsamplers, .attentions
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        n = len(block.resnets)
        for j in range(n):
            if j == n - 1 and block.upsamplers is not None:
                entries.append((f"up_blocks.{b}.upsamplers.0", block.upsamplers[0]))
            elif attentions is not None:
                entries.append((f"up_blocks.{b}.attentions.{j}", attentions[j]))
            else:
                entries.append((f"up_blocks.{b}.resnets.{j}", block.resnets[j]))
    # the state entering the last layer exists, but nothing enters "layer n": drop the final output
    return entries[:-1]


def decoder_layer_channels(unet: UNet2DConditionModel) -> list[int]:
    """Channels of the hidden state entering each decoder layer, from the U-Net config."""
    boc = list(unet.config["block_out_channels"])
    rev = boc[::-1]
    channels = [boc[-1]]
    block: Any  # an up block: .resnets
    for b, block in enumerate(unet.up_blocks):
        channels.extend([rev[b]] * len(block.resnets))
    return channels[:-1]


def supports_truncated_forward(unet: UNet2DConditionModel) -> bool:
    """Whether ``unet_decoder_states`` reproduces this U-Net's forward: SD-style text-to-image
    U-Nets (no class/added embeddings, no encoder projection, no FreeU). Others use hooks."""
    cfg = unet.config
    freeu = any(getattr(b, "s1", None) for b in unet.up_blocks)
    return (
        cfg["class_embed_type"] is None
        and cfg["addition_embed_type"] is None
        and not cfg["center_input_sample"]
        and unet.encoder_hid_proj is None
        and not freeu
    )


def unet_decoder_states(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    positions: tuple[int, ...],
) -> list[torch.Tensor]:
    """The hidden states entering decoder layers ``positions``, computing nothing after the last.

    The same module calls, in the same order, as diffusers' ``UNet2DConditionModel.forward``
    (and its up blocks' forwards) up to that point - so the states are bit-identical to hooking
    the full forward (tests/layout) - but as one straight function with no hooks or exceptions,
    so ``torch.compile`` can take it whole. Sides must be multiples of the U-Net's total
    upsampling (``SDUNetBackbone`` checks), so no ``upsample_size`` is needed.
    """
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    ehs = encoder_hidden_states
    h = unet.conv_in(sample)
    skips = [h]
    block: Any  # a down/up block (classes depend on the config): .resnets, .upsamplers, .attentions
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    if getattr(unet.mid_block, "has_cross_attention", False):
        h = unet.mid_block(h, emb, encoder_hidden_states=ehs)
    else:
        h = unet.mid_block(h, emb)
    out = {0: h}  # position 0: the state entering decoder layer 0
    last = max(positions)
    p = 0
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            if p == last:
                return [out[q] for q in positions]
            h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
            if attentions is not None:
                h = attentions[j](h, encoder_hidden_states=ehs, return_dict=False)[0]
            if j == len(block.resnets) - 1 and block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    h = upsampler(h)
            p += 1
            out[p] = h
    return [out[q] for q in positions]


class LatentEncoder:
    """Images in [-1, 1] -> the clean latent z0 = VAE posterior mean (minus shift) x scaling factor.

    The one home of this step: ``SDUNetBackbone`` noises z0 for the U-Net, ``VAELatentBackbone``
    takes z0 itself as the features. ``AutoencoderKL.encode(x).latent_dist.mean`` is spelt out
    so the encoder can be compiled (``compile``): the posterior's moments are (mean, logvar)
    stacked on the channel axis. ``channels_last`` converts the encoder's weights to NHWC (their
    values and state dict are untouched) and feeds it NHWC images.
    """

    def __init__(self, vae: AutoencoderKL, *, compile: bool = False, channels_last: bool = False):
        if channels_last:
            # torch's Module.to overloads omit memory_format (accepted at run time)
            vae.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.vae = vae
        self.channels_last = bool(channels_last)
        self._encoder = compile_for_inference(vae.encoder) if compile else vae.encoder

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        x = images.to(device=vae.device, dtype=vae.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        moments = self._encoder(x)
        quant_conv = getattr(vae, "quant_conv", None)
        if quant_conv is not None:
            moments = quant_conv(moments)
        z = moments.chunk(2, dim=1)[0]
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return z * vae.config["scaling_factor"]


class SDUNetBackbone:
    """Stable Diffusion U-Net decoder features (NEURAL_LAYOUT.md)."""

    name = "sd-unet"

    def __init__(
        self,
        components: SDComponents,
        layers: tuple[int, ...] = (2, 5, 8),
        *,
        timestep: int = 100,
        noise_seed: int = 42,
        prompt: str = "",
        early_stop: bool = True,
        micro_batch: int = 1,
        compile: bool = False,
        channels_last: bool = False,
    ):
        unet = components.unet
        if micro_batch < 1:
            raise LayoutError(f"micro_batch must be >= 1, got {micro_batch}")
        modules = decoder_layer_modules(unet)
        layers = tuple(int(p) for p in layers)
        if not layers or list(layers) != sorted(set(layers)):
            raise LayoutError(f"layout layers {layers} must be a non-empty, strictly increasing tuple")
        bad = [p for p in layers if not 0 <= p < len(modules)]
        if bad:
            raise LayoutError(
                f"layout layer(s) {bad} do not exist: the U-Net of {components.ref!r} has "
                f"{len(modules)} decoder layers (positions 0..{len(modules) - 1}); "
                "fix: choose layers within that range (SD 1.5 and 'tiny': 2, 5, 8)"
            )
        n_steps = components.noise_scheduler.config["num_train_timesteps"]
        if not 0 <= timestep < n_steps:
            raise LayoutError(f"layout timestep {timestep} is outside the schedule's 0..{n_steps - 1}")
        self.components = components
        self.layers = layers
        self.timestep = int(timestep)
        self.noise_seed = int(noise_seed)
        self.prompt = prompt
        self.early_stop = early_stop
        self.micro_batch = int(micro_batch)
        self._modules = [modules[p] for p in layers]
        all_channels = decoder_layer_channels(unet)
        self.layer_channels = tuple(all_channels[p] for p in layers)
        self.channels = sum(self.layer_channels)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}
        self._prompt_embedding: torch.Tensor | None = None
        # the image side must survive every down/upsampling of the VAE and the U-Net
        self.multiple = components.vae_scale_factor * 2 ** (len(unet.config["block_out_channels"]) - 1)
        # At 512x1024 the VAE encoder is ~70% of the eager time, most of it memory-bound
        # elementwise work at full resolution (group norm, SiLU, adds) that torch.compile fuses
        # (docs/benchmarks.md). Compiled *references*: the shared components (hashed, saved, used
        # by the trainer) keep their own module tree. The U-Net side compiles the explicit
        # truncated forward (``unet_decoder_states``), which has no hooks or exceptions to break
        # the graph. channels_last changes the weights' memory layout only (values and state
        # dict are untouched): cuDNN's fast bf16 convolutions are NHWC.
        # (the VAE encoder's compile and NHWC: LatentEncoder)
        if channels_last:
            # diffusers' ModelMixin.to is a functools.wraps of Module.to, which typeshed types as unbound
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        self.channels_last = bool(channels_last)
        self.compiled = bool(compile)
        self._latents = LatentEncoder(components.vae, compile=compile, channels_last=channels_last)
        self._decoder_states = functools.partial(unet_decoder_states, unet)
        if compile:
            self._decoder_states = compile_for_inference(self._decoder_states)

    @property
    def device(self) -> torch.device:
        return self.components.unet.device

    @property
    def module_paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self._modules)

    def signature(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "model_ref": self.components.ref,
            "content_hash": self.components.content_hash,
            "layers": list(self.layers),
            "modules": list(self.module_paths),
            "channels": self.channels,
            "timestep": self.timestep,
            "noise_seed": self.noise_seed,
            "prompt": self.prompt,
        }

    def noise(self, latent_shape: tuple[int, ...]) -> torch.Tensor:
        """THE fixed noise for one latent of shape (C, h, w): generator seeded ``noise_seed``, on CPU.

        The same tensor is added to every image (independent of batch size and device), and the
        ControlNet trainer and synthesiser reuse it through this method.
        """
        key = tuple(int(s) for s in latent_shape)
        if key not in self._noise:
            gen = torch.Generator(device="cpu").manual_seed(self.noise_seed)
            self._noise[key] = torch.randn(key, generator=gen, dtype=torch.float32)
        return self._noise[key]

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise LayoutError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise LayoutError(
                f"image size {h}x{w} is not a multiple of {self.multiple} (VAE stride x U-Net "
                f"downsamplings of {self.components.ref!r}); fix: set the layout resolution to a size "
                f"divisible by {self.multiple}, e.g. 512x1024 for SD"
            )

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Clean latent z0 = posterior mean (minus shift) x scaling factor (``LatentEncoder``)."""
        return self._latents(images)

    @torch.inference_mode()
    def noisy_latents(self, z0: torch.Tensor) -> torch.Tensor:
        """z_t at t = ``timestep`` with the shared fixed noise (DDPM training schedule)."""
        eps = self.noise(tuple(z0.shape[1:])).to(device=z0.device, dtype=z0.dtype)
        eps = eps.unsqueeze(0).expand_as(z0)
        t = torch.full((z0.shape[0],), self.timestep, dtype=torch.long, device=z0.device)
        # diffusers annotates the timesteps as IntTensor; it means any integer tensor (t is int64)
        return self.components.noise_scheduler.add_noise(z0, eps, t)  # type: ignore[arg-type]

    def _prompt(self, batch: int) -> torch.Tensor:
        if self._prompt_embedding is None:
            self._prompt_embedding = encode_prompts(self.components, [self.prompt])
        return self._prompt_embedding.expand(batch, -1, -1)

    @torch.inference_mode()
    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The raw hooked hidden states, one per requested layer (model dtype, own grid)."""
        self._check_images(images)
        zt = self.noisy_latents(self.encode_latents(images))
        return self.unet_features(zt)

    @torch.inference_mode()
    def unet_features(self, zt: torch.Tensor) -> list[torch.Tensor]:
        """Run the U-Net on noisy latents ``zt`` and return the states entering ``layers``.

        With ``early_stop`` the forward is ``unet_decoder_states`` (stops after the last layer
        needed; compilable); without it, diffusers' own full forward with capture hooks - the
        reference the early stop is tested bit-identical against.
        """
        unet = self.components.unet
        t = torch.full((zt.shape[0],), self.timestep, dtype=torch.long, device=zt.device)
        prompt = self._prompt(zt.shape[0]).to(unet.dtype)
        x = zt.to(unet.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.early_stop and supports_truncated_forward(unet):
            return self._decoder_states(x, t, prompt, self.layers)
        captured: dict[int, torch.Tensor] = {}
        last = len(self._modules) - 1

        def make_hook(i: int):
            def hook(_module, _inputs, output):
                captured[i] = output[0] if isinstance(output, tuple) else output
                if self.early_stop and i == last:
                    raise _StopForward

            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, (_, m) in enumerate(self._modules)]
        try:
            unet(x, t, encoder_hidden_states=prompt)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return [captured[i] for i in range(len(self._modules))]

    @staticmethod
    def combine(features: list[torch.Tensor]) -> torch.Tensor:
        """Bilinear (align_corners=False) to the last layer's grid, concatenated in order, float32."""
        size = features[-1].shape[-2:]
        out = [
            f.float()
            if f.shape[-2:] == size
            else F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False)
            for f in features
        ]
        return torch.cat(out, dim=1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, sum(layer channels), h, w) float32 on the model's device."""
        self._check_images(images)
        return run_fixed_batches(lambda x: self.combine(self.layer_features(x)), images, self.micro_batch)


def random_unet(unet: UNet2DConditionModel, seed: int) -> UNet2DConditionModel:
    """A U-Net of ``unet``'s own config with fresh random weights drawn from ``seed``, on the CPU in float32.

    diffusers initialises through torch's default initialisers, so with a forked global RNG the
    weights depend on the seed and the config alone: not on the device, the dtype ``unet`` was
    cast to or on what else drew random numbers. The caller moves it. The RNG is seeded with a
    digest of ("sd-unet-random", seed), not ``seed`` itself: the built-in models draw their own
    random U-Nets from small integer seeds (``tiny``'s from 1), and the ablation's U-Net must not
    coincide with the model it is compared with.
    """
    from diffusers import UNet2DConditionModel

    digest = hashlib.sha256(f"sd-unet-random|{seed}".encode()).digest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # < 2**63: any torch seed
        # from_config returns the class it is called on; diffusers types it as a generic Self
        fresh = cast("UNet2DConditionModel", UNet2DConditionModel.from_config(unet.config))
    return fresh.eval()


class RandomUNetBackbone(SDUNetBackbone):
    """``sd-unet`` with the U-Net re-initialised randomly (seeded) from its own config.

    The offline ablation's "do pretrained features matter?" row: the same decoder positions,
    timestep, fixed noise and empty prompt through the same architecture, but with weights that
    learnt nothing. The VAE (and the text encoder for the prompt) stay the model's own, so only
    the U-Net's training is taken away. ``components`` is not changed: a copy holds the random
    U-Net (the ControlNet still starts from the pretrained one). The content hash in the
    signature is that of the random U-Net's weights (before any dtype cast) joined with the
    model's, and the seed is recorded too, so a PCA fitted here is refused for ``sd-unet`` (and
    for another seed), and the other way round. Other options: as ``SDUNetBackbone``.
    """

    name = "sd-unet-random"

    def __init__(
        self,
        components: SDComponents,
        layers: tuple[int, ...] = (2, 5, 8),
        *,
        random_init_seed: int = 0,
        **options: Any,
    ):
        if random_init_seed < 0:
            raise LayoutError(f"random_init_seed must be >= 0, got {random_init_seed}")
        pretrained = components.unet
        fresh = random_unet(pretrained, random_init_seed)
        digest = hashlib.sha256(
            f"{components.content_hash}|random_unet={content_hash(fresh, 64)}".encode()
        ).hexdigest()[:16]
        # as a Module: typeshed types diffusers' ModelMixin.to (a functools.wraps) as unbound
        module: torch.nn.Module = fresh
        module.to(pretrained.device)
        if fresh.dtype != pretrained.dtype:
            module.to(pretrained.dtype)
        self.random_init_seed = int(random_init_seed)
        super().__init__(dataclasses.replace(components, unet=fresh, content_hash=digest), layers, **options)

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "random_init_seed": self.random_init_seed}


class VAELatentBackbone:
    """The VAE's posterior-mean latent z0 as the feature map: (B, latent channels, H/s, W/s).

    The offline ablation's "is a U-Net needed at all?" row: the image compressed by the same
    model's VAE (``LatentEncoder``: posterior mean x scaling factor, no noise, no U-Net) and fed
    to the same PCA. SD's VAE has 4 latent channels at stride s = 8 (the ``tiny`` model: 4 at
    stride 4), so the PCA keeps at most 4 components (``fit_layout_pca`` refuses more).
    """

    name = "vae-latent"

    def __init__(
        self,
        components: SDComponents,
        *,
        micro_batch: int = 1,
        compile: bool = False,
        channels_last: bool = False,
    ):
        if micro_batch < 1:
            raise LayoutError(f"micro_batch must be >= 1, got {micro_batch}")
        self.components = components
        self.micro_batch = int(micro_batch)
        self.channels = int(components.vae.config["latent_channels"])
        self.multiple = components.vae_scale_factor
        self._latents = LatentEncoder(components.vae, compile=compile, channels_last=channels_last)

    @property
    def device(self) -> torch.device:
        return self.components.vae.device

    def signature(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "model_ref": self.components.ref,
            "content_hash": self.components.content_hash,
            "channels": self.channels,
            "stride": self.multiple,
        }

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, latent channels, H/stride, W/stride) float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise LayoutError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise LayoutError(
                f"image size {h}x{w} is not a multiple of {self.multiple} (the VAE stride of "
                f"{self.components.ref!r}); fix: set the layout resolution to a size divisible by {self.multiple}"
            )
        return run_fixed_batches(lambda x: self._latents(x).float(), images, self.micro_batch)


# Normalisation statistics each ViT was trained with (its image processor's image_mean/std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ViTPatchBackbone:
    """A ViT's patch tokens as a dense map (B, hidden, H/patch, W/patch) - DINOv2, DINO, CLIP.

    One home for what the paper's Table 1 ViTs share: the image is resized (bilinear) to the
    nearest multiple of the patch size, mapped from [-1, 1] to [0, 1] and normalised with the
    statistics the model was trained with (``mean``, ``std``); one forward; the CLS token is
    dropped and the patch tokens are laid out on their grid, row-major as the patch embedding
    emits them. A subclass names its transformers class (``load``), its statistics, how the
    forward is called (``patch_tokens``) and, for messages, where to get its weights.

    ``model`` is a local folder (``save_pretrained`` or a downloaded hub checkpoint) or an
    in-memory model (tests build one from a config). ``content_hash`` identifies the weights.
    """

    name: str
    label: str  # in messages, e.g. "DINOv2"
    model_class: str  # the transformers class that loads the folder, for messages
    model_types: tuple[str, ...]  # the config.json model_type values ``load`` accepts
    hub_example: str  # a hub checkpoint of this kind: where to get the weights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self, model: Any, *, device: str | torch.device = "cpu", ref: str | None = None, micro_batch: int = 1
    ):
        if micro_batch < 1:
            raise LayoutError(f"micro_batch must be >= 1, got {micro_batch}")
        self.micro_batch = int(micro_batch)
        if isinstance(model, str | Path):
            path = self.check_folder(model)
            ref = ref or str(path)
            model = self.load(path)
        self.model = model.to(resolve_device(device)).eval()
        self.ref = ref or "in-memory"
        self.patch = int(self.model.config.patch_size)
        self.channels = int(self.model.config.hidden_size)
        self.content_hash = content_hash(self.model)

    @classmethod
    def check_folder(cls, path: str | Path | None, field: str | None = None) -> Path:
        """``path`` if it holds a ``config.json`` of this model kind (nothing else is read).

        Otherwise a LayoutError naming the config ``field`` (when given), the folder and where to
        get the weights - the driver calls this before any worker loads the model.
        """
        where = f"{field}: {path}" if field else str(path)
        fix = (
            f"fix: download {cls.hub_example} where there is network access "
            f"(`hf download {cls.hub_example} --local-dir {path or '<folder>'}`) or save a "
            f"{cls.model_class} with save_pretrained, and point {field or 'the backbone'} to that folder"
        )
        if path is None:
            raise LayoutError(f"{field or 'model folder'}: not set; {fix}")
        config = Path(path) / "config.json"
        if not config.is_file():
            raise LayoutError(f"{where}: no {cls.label} model here (config.json missing); {fix}")
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            raise LayoutError(f"{config}: unreadable model config ({e}); {fix}") from None
        model_type = data.get("model_type") if isinstance(data, dict) else None
        if model_type not in cls.model_types:
            raise LayoutError(
                f"{where}: config.json describes a {model_type!r} model, not {cls.label} (model_type "
                f"{' or '.join(repr(t) for t in cls.model_types)}); {fix}"
            )
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> torch.nn.Module:
        """The model in folder ``path`` (already checked by ``check_folder``)."""
        raise NotImplementedError

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 1 + gh * gw, hidden) tokens of normalised images at a multiple of the patch size."""
        return self.model(pixel_values=pixel_values).last_hidden_state

    def signature(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "model_ref": self.ref,
            "content_hash": self.content_hash,
            "channels": self.channels,
            "patch_size": self.patch,
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, hidden, ~H/patch, ~W/patch) float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise LayoutError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        return run_fixed_batches(self._features, images, self.micro_batch)

    @torch.inference_mode()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        gh, gw = max(1, round(h / self.patch)), max(1, round(w / self.patch))
        x = (images.float() + 1) / 2
        if (gh * self.patch, gw * self.patch) != (h, w):
            x = F.interpolate(
                x, size=(gh * self.patch, gw * self.patch), mode="bilinear", align_corners=False
            )
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        param = next(self.model.parameters())
        x = ((x - mean) / std).to(device=param.device, dtype=param.dtype)
        tokens = self.patch_tokens(x)[:, 1:, :]  # drop the CLS token
        return tokens.float().transpose(1, 2).reshape(x.shape[0], self.channels, gh, gw)


class Dinov2Backbone(ViTPatchBackbone):
    """DINOv2 patch tokens (the last hidden state, after the final LayerNorm) via ``Dinov2Model``.

    The paper's Table 1 runner-up after SD. DINOv2 interpolates its position embeddings to any
    grid by itself; ImageNet statistics, as it was trained.
    """

    name = "dinov2"
    label = "DINOv2"
    model_class = "Dinov2Model"
    model_types = ("dinov2",)
    hub_example = "facebook/dinov2-base"

    @classmethod
    def load(cls, path: Path) -> torch.nn.Module:
        from transformers import Dinov2Model

        return Dinov2Model.from_pretrained(path)


class DinoBackbone(ViTPatchBackbone):
    """The original DINO's patch tokens (last hidden state, after the final LayerNorm) via ``ViTModel``.

    Table 1's DINO row (e.g. facebook/dino-vitb16: 768 channels at stride 16). Its position
    embeddings are learnt for a 224x224 (14x14) grid, so the forward interpolates them to the
    image's grid (``interpolate_pos_encoding=True``; bicubic, as DINO's own code does); ImageNet
    statistics, as DINO was trained. Loaded without the pooler: DINO checkpoints have none that
    the features use, and a freshly initialised one would change the content hash per load.
    """

    name = "dino"
    label = "DINO ViT"
    model_class = "ViTModel"
    model_types = ("vit",)
    hub_example = "facebook/dino-vitb16"

    @classmethod
    def load(cls, path: Path) -> torch.nn.Module:
        from transformers import ViTModel

        return ViTModel.from_pretrained(path, add_pooling_layer=False)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state


class ClipBackbone(ViTPatchBackbone):
    """CLIP vision-tower patch tokens via ``CLIPVisionModel``: Table 1's CLIP row.

    The tokens are the encoder's last hidden state (before ``post_layernorm``, which CLIP
    applies to the pooled CLS token only). CLIP's position embeddings are fixed for its
    ``image_size`` (224 -> a 14x14 grid for ViT-B/16); the installed transformers'
    ``CLIPVisionModel`` takes ``interpolate_pos_encoding=True``, so they are interpolated
    (bicubic) to the image's own grid instead of resizing every image to 224x224, which would
    give one fixed grid whatever the image's aspect ratio. CLIP's own mean/std. The folder may
    be a full ``CLIPModel`` checkpoint (openai/clip-vit-base-patch16 is one): transformers loads
    its vision tower.
    """

    name = "clip"
    label = "CLIP"
    model_class = "CLIPVisionModel"
    model_types = ("clip", "clip_vision_model")
    hub_example = "openai/clip-vit-base-patch16"
    mean = CLIP_MEAN
    std = CLIP_STD

    @classmethod
    def load(cls, path: Path) -> torch.nn.Module:
        from transformers import CLIPVisionModel

        return CLIPVisionModel.from_pretrained(path)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
