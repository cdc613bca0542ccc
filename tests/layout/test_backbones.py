"""SD U-Net backbone: layer positions, shapes, early stop, fixed noise, batch independence; DINOv2."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from factory.layout import (
    Dinov2Backbone,
    LayoutError,
    SDUNetBackbone,
    decoder_layer_channels,
    decoder_layer_modules,
    images_to_tensor,
)
from factory.models import build_text_encoder, build_unet
from factory.models.components import sd15_unet_config, sd15_vae_config

SD15_PATHS = {2: "up_blocks.0.resnets.1", 5: "up_blocks.1.attentions.1", 8: "up_blocks.2.attentions.1"}


def sd15_on_meta(tiny_components):
    """SD 1.5 architecture on the meta device: real shapes, no weights, no compute."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config())
        vae = AutoencoderKL(**sd15_vae_config())
    text_encoder, tokenizer = build_text_encoder("sd15-arch")
    # a private scheduler: add_noise moves its tables to the latents' device (here: meta)
    scheduler = DDPMScheduler.from_config(tiny_components.noise_scheduler.config)
    return dataclasses.replace(
        tiny_components,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder.to("meta"),
        tokenizer=tokenizer,
        noise_scheduler=scheduler,
    )


def test_sd15_layer_modules_match_the_spec():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config())
    modules = decoder_layer_modules(unet)
    assert len(modules) == 12
    assert {p: modules[p][0] for p in SD15_PATHS} == SD15_PATHS
    assert modules[0][0] == "mid_block"
    assert modules[3][0] == "up_blocks.0.upsamplers.0"  # layer 2 closes up block 0 with its upsampler
    channels = decoder_layer_channels(unet)
    assert [channels[p] for p in (2, 5, 8)] == [1280, 1280, 640]


def test_sd15_shapes_at_512x1024(tiny_components):
    bb = SDUNetBackbone(sd15_on_meta(tiny_components), (2, 5, 8))
    assert bb.channels == 3200 and bb.module_paths == tuple(SD15_PATHS.values())
    images = torch.zeros(1, 3, 512, 1024, device="meta")
    layers = bb.layer_features(images)
    assert [tuple(f.shape[1:]) for f in layers] == [(1280, 8, 16), (1280, 16, 32), (640, 32, 64)]
    assert tuple(bb(images).shape) == (1, 3200, 32, 64)


@pytest.mark.slow
def test_sd15_early_stop_is_bit_identical_to_full_forward(tiny_components):
    """Real (random) SD 1.5 U-Net weights; 256x512 input (latent 32x64) keeps it near a minute on CPU."""
    text_encoder, tokenizer = build_text_encoder("sd15-arch")
    comps = dataclasses.replace(
        tiny_components, unet=build_unet("sd15-arch"), text_encoder=text_encoder, tokenizer=tokenizer
    )
    bb = SDUNetBackbone(comps, (2, 5, 8))
    zt = torch.randn(1, 4, 32, 64, generator=torch.Generator().manual_seed(0))
    early = bb.unet_features(zt)
    bb.early_stop = False
    full = bb.unet_features(zt)
    assert [tuple(f.shape[1:]) for f in early] == [(1280, 4, 8), (1280, 8, 16), (640, 16, 32)]
    for a, b in zip(early, full):
        assert torch.equal(a, b)


def test_tiny_features_early_stop_identical_and_shaped(tiny_components, scenes):
    bb = SDUNetBackbone(tiny_components)
    assert bb.module_paths == tuple(SD15_PATHS.values())  # same positions, smaller model
    x = images_to_tensor(scenes[:2])
    early = bb(x)
    bb.early_stop = False
    full = bb(x)
    assert early.shape == (2, 64 + 64 + 32, 16, 32) and early.dtype == torch.float32
    assert torch.equal(early, full)
    assert not torch.equal(early[0], early[1])


def test_early_stop_skips_the_rest_of_the_decoder(tiny_components, scenes):
    calls = []
    last = tiny_components.unet.up_blocks[2].resnets[2]
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        SDUNetBackbone(tiny_components)(images_to_tensor(scenes[:1]))
        assert calls == []
        SDUNetBackbone(tiny_components, early_stop=False)(images_to_tensor(scenes[:1]))
        assert calls == [1]
    finally:
        handle.remove()


def test_fixed_noise_is_seeded_and_shared(tiny_components):
    bb = SDUNetBackbone(tiny_components)
    eps = bb.noise((4, 16, 32))
    expected = torch.randn((4, 16, 32), generator=torch.Generator().manual_seed(42))
    assert torch.equal(eps, expected)
    z0 = torch.zeros(3, 4, 16, 32)
    zt = bb.noisy_latents(z0)
    sigma = (1 - tiny_components.noise_scheduler.alphas_cumprod[100]).sqrt()
    for i in range(3):
        torch.testing.assert_close(zt[i], sigma * expected)
    other = SDUNetBackbone(tiny_components, noise_seed=43)
    assert not torch.equal(other.noise((4, 16, 32)), eps)
    assert other.signature() != bb.signature()


def test_features_do_not_depend_on_batch_composition(tiny_components, scenes):
    bb = SDUNetBackbone(tiny_components, micro_batch=2)
    x = images_to_tensor(scenes)
    all_at_once = bb(x)
    one_by_one = torch.cat([bb(x[i : i + 1]) for i in range(len(scenes))])
    shuffled = bb(x[[3, 0, 4, 2, 1]])
    assert torch.equal(all_at_once, one_by_one)
    assert torch.equal(shuffled, all_at_once[[3, 0, 4, 2, 1]])


def test_layers_the_unet_lacks_are_refused(tiny_components):
    with pytest.raises(LayoutError, match=r"layer\(s\) \[9\] do not exist.*9 decoder layers"):
        SDUNetBackbone(tiny_components, (2, 5, 9))
    with pytest.raises(LayoutError, match="strictly increasing"):
        SDUNetBackbone(tiny_components, (5, 2))


def test_image_size_must_fit_the_unet(tiny_components):
    bb = SDUNetBackbone(tiny_components)
    with pytest.raises(LayoutError, match="not a multiple of 16"):
        bb(torch.zeros(1, 3, 60, 128))


def test_dinov2_backbone_from_config_and_folder(tmp_path, scenes):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            patch_size=8,
            image_size=64,
        )
    )
    bb = Dinov2Backbone(model, ref="tiny-dinov2")
    x = images_to_tensor(scenes[:2])
    feats = bb(x)
    assert feats.shape == (2, 32, 8, 16)
    model.save_pretrained(tmp_path / "dino")
    again = Dinov2Backbone(tmp_path / "dino")
    assert again.signature()["content_hash"] == bb.signature()["content_hash"]
    torch.testing.assert_close(again(x), feats)
    with pytest.raises(LayoutError, match="no DINOv2 model here"):
        Dinov2Backbone(tmp_path / "nothing")


def test_encode_latents_is_the_vae_posterior_mean(tiny_components, scenes):
    """encode_latents spells out AutoencoderKL.encode (so its encoder can be compiled): same numbers."""
    backbone = SDUNetBackbone(tiny_components)
    x = images_to_tensor(scenes[:2])
    vae = tiny_components.vae
    with torch.inference_mode():
        expected = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        got = backbone.encode_latents(x)
    assert torch.equal(got, expected)


def test_truncated_forward_compiles_as_one_graph(tiny_components, scenes):
    """layout.compile relies on unet_decoder_states tracing whole: no hooks, no graph breaks."""
    import functools

    from factory.layout.backbones import unet_decoder_states

    bb = SDUNetBackbone(tiny_components)
    with torch.inference_mode():
        zt = bb.noisy_latents(bb.encode_latents(images_to_tensor(scenes[:2])))
        t = torch.full((2,), bb.timestep, dtype=torch.long)
        prompt = bb._prompt(2)
        fn = functools.partial(unet_decoder_states, tiny_components.unet)
        traced = torch.compile(fn, backend="eager", fullgraph=True)(zt, t, prompt, bb.layers)
        eager = bb.unet_features(zt)
    assert [tuple(f.shape[1:]) for f in traced] == [(64, 4, 8), (64, 8, 16), (32, 16, 32)]
    for a, b in zip(traced, eager):
        assert torch.equal(a, b)
