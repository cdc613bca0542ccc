"""Table 1 in miniature: the DINO and CLIP backbones and the two offline ablation backbones.

DINO and CLIP run the real architectures with random weights, built offline from their configs
and saved to folders as a download would be: facebook/dino-vitb16 (ViT-B/16: hidden 768, 12
layers, 12 heads, MLP 3072, patch 16, image 224) and the vision tower of
openai/clip-vit-base-patch16 (the same sizes). Full depth: building, saving and loading one
takes ~3 s on one CPU thread. ``vae-latent`` and ``sd-unet-random`` use the ``tiny`` model.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from factory.config import ConfigError, from_dict
from factory.layout import (
    ClipBackbone,
    DinoBackbone,
    LayoutConfig,
    LayoutError,
    NeuralLayout,
    RandomUNetBackbone,
    SDUNetBackbone,
    VAELatentBackbone,
    build_backbone,
    check_layout_artifacts,
    fit_layout_pca,
    images_to_tensor,
)
from factory.models import content_hash

VIT_B16 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
VIT_B16 |= {"patch_size": 16, "image_size": 224}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random-weight DINO ViT-B/16 and CLIP ViT-B/16 vision tower, saved as local model folders."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("table1")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**VIT_B16), add_pooling_layer=False).save_pretrained(root / "dino-vitb16")
    CLIPVisionModel(CLIPVisionConfig(**VIT_B16, projection_dim=512)).save_pretrained(root / "clip-vitb16")
    return {"dino": root / "dino-vitb16", "clip": root / "clip-vitb16"}


@pytest.fixture(scope="module")
def vits(folders):
    """The two backbones as build_backbone makes them from a layout config."""
    return {
        name: build_backbone(LayoutConfig(backbone=name, device="cpu", micro_batch=2, **{name: folder}))
        for name, folder in folders.items()
    }


@pytest.fixture(scope="module")
def images(scenes):
    return images_to_tensor(scenes[:2])  # (2, 3, 64, 128) in [-1, 1]


def test_vit_backbones_are_their_classes_with_the_real_sizes(vits):
    assert isinstance(vits["dino"], DinoBackbone) and isinstance(vits["clip"], ClipBackbone)
    for bb in vits.values():
        assert bb.channels == 768 and bb.patch == 16
        sig = bb.signature()
        assert sig["channels"] == 768 and sig["patch_size"] == 16 and len(sig["content_hash"]) == 16


@pytest.mark.parametrize("name", ["dino", "clip"])
def test_vit_patch_map_shape_for_any_input_size(vits, name):
    """(B, 768, H/16, W/16); off-multiple sides are resized to the nearest patch multiple."""
    bb = vits[name]
    assert bb(torch.zeros(2, 3, 96, 160)).shape == (2, 768, 6, 10)
    assert bb(torch.zeros(1, 3, 224, 224)).shape == (1, 768, 14, 14)  # the trained grid
    assert bb(torch.zeros(1, 3, 100, 150)).shape == (1, 768, 6, 9)  # 6.25 x 9.4 patches


@pytest.mark.parametrize("name", ["dino", "clip"])
def test_vit_features_deterministic_and_image_dependent(vits, folders, images, name):
    bb = vits[name]
    a = bb(images)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, bb(images))
    # a fresh load of the same folder: same weights (hash) and the same features
    again = build_backbone(LayoutConfig(backbone=name, device="cpu", micro_batch=2, **{name: folders[name]}))
    assert again.signature() == bb.signature()
    assert torch.equal(again(images), a)
    # two different scenes: different features
    assert (a[0] - a[1]).abs().mean() > 0.1 * a.abs().mean()


@pytest.mark.parametrize("name", ["dino", "clip"])
@pytest.mark.parametrize("cell", [(0, 0), (2, 5)])
def test_vit_feature_map_is_spatially_aligned(vits, images, name, cell):
    """Changing one 16x16 patch changes its own feature cell far more than any other cell.

    Attention spreads a little of the change everywhere, but each token's residual stream
    carries its own patch: the cell that moves most is the patch's, so tokens are laid out on
    the image's grid in the right order (rows, then columns).
    """
    bb = vits[name]
    x = images[:1]
    r, c = cell
    changed = x.clone()
    changed[..., 16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)] = -x[
        ..., 16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)
    ]
    delta = (bb(changed) - bb(x)).norm(dim=1)[0]  # (4, 8)
    assert delta.shape == (4, 8)
    assert tuple(divmod(int(delta.argmax()), 8)) == cell
    others = torch.cat([delta.flatten()[: r * 8 + c], delta.flatten()[r * 8 + c + 1 :]])
    assert delta[r, c] > 5 * others.max()


@pytest.mark.parametrize(
    ("name", "mean"), [("dino", (0.485, 0.456, 0.406)), ("clip", (0.4815, 0.4578, 0.4082))]
)
def test_vit_images_are_normalised_with_the_models_statistics(vits, name, mean):
    """An image of exactly the model's mean colour reaches the ViT as all-zero pixel values."""
    bb = vits[name]
    colour = torch.tensor(bb.mean).view(1, 3, 1, 1)
    assert torch.allclose(colour.flatten(), torch.tensor(mean), atol=1e-4)
    image = (colour * 2 - 1).expand(1, 3, 32, 48)
    with torch.inference_mode():
        tokens = bb.model(
            pixel_values=torch.zeros(1, 3, 32, 48), interpolate_pos_encoding=True
        ).last_hidden_state
    expected = tokens[:, 1:].reshape(1, 2, 3, 768).permute(0, 3, 1, 2)  # (row, col) grid, CLS dropped
    torch.testing.assert_close(bb(image), expected, atol=1e-4, rtol=1e-4)


def test_clip_folder_may_be_a_full_clip_model(tmp_path, images):
    """openai/clip-vit-base-patch16 is a CLIPModel checkpoint (text + vision): its vision tower loads."""
    from transformers import CLIPConfig, CLIPModel

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    config = CLIPConfig(
        text_config={**small, "vocab_size": 99},
        vision_config={**small, "patch_size": 16, "image_size": 64},
        projection_dim=16,
    )
    torch.manual_seed(0)
    full = CLIPModel(config)
    full.save_pretrained(tmp_path / "clip")
    vision = full.vision_model.eval()  # a CLIPVisionModel inside the CLIPModel
    from_folder = ClipBackbone(tmp_path / "clip")
    assert from_folder.content_hash == content_hash(vision)
    torch.testing.assert_close(from_folder(images), ClipBackbone(vision)(images))


@pytest.mark.parametrize(
    ("name", "hub_id"), [("dino", "facebook/dino-vitb16"), ("clip", "openai/clip-vit-base-patch16")]
)
def test_vit_folder_errors_name_the_field_the_folder_and_the_weights(tmp_path, folders, name, hub_id):
    with pytest.raises(ConfigError, match=rf"^{name}: backbone '{name}' needs {name}: .*{hub_id}"):
        from_dict(LayoutConfig, {"backbone": name})
    missing = tmp_path / "nothing"
    cfg = LayoutConfig(backbone=name, **{name: missing})
    with pytest.raises(
        LayoutError,
        match=rf"layout\.{name}: {re.escape(str(missing))}: no .* model here.*hf download {hub_id}",
    ):
        check_layout_artifacts(cfg)
    with pytest.raises(LayoutError, match=rf"layout\.{name}: {re.escape(str(missing))}"):
        build_backbone(cfg)
    other = folders["clip" if name == "dino" else "dino"]  # the other kind's folder
    with pytest.raises(
        LayoutError, match=rf"layout\.{name}: {re.escape(str(other))}: config.json describes a '\w+' model"
    ):
        check_layout_artifacts(LayoutConfig(backbone=name, **{name: other}))
    check_layout_artifacts(LayoutConfig(backbone=name, **{name: folders[name]}))  # the right one passes


# --------------------------------------------------------------------------- the offline ablation rows


def test_vae_latent_is_the_posterior_mean_at_the_vae_stride(tiny_components, images):
    bb = build_backbone(LayoutConfig(backbone="vae-latent", device="cpu", micro_batch=2), tiny_components)
    assert isinstance(bb, VAELatentBackbone) and bb.channels == 4
    vae = tiny_components.vae
    with torch.inference_mode():
        expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    feats = bb(images)
    assert feats.shape == (2, 4, 16, 32)  # the tiny VAE's stride is 4 (SD's: 8)
    torch.testing.assert_close(feats, expected)
    with pytest.raises(LayoutError, match="not a multiple of 4"):
        bb(torch.zeros(1, 3, 62, 128))


def test_vae_latent_refuses_more_pca_components_than_channels(tiny_components, scenes):
    cfg = LayoutConfig(backbone="vae-latent", n_components=20, pca_samples=100, device="cpu")
    bb = build_backbone(cfg, tiny_components)
    with pytest.raises(
        LayoutError, match=r"n_components 20 exceeds the 4 feature channels of the 'vae-latent'"
    ):
        fit_layout_pca(bb, scenes[:2], cfg)
    ok = LayoutConfig(backbone="vae-latent", n_components=4, pca_samples=300, device="cpu")
    pca = fit_layout_pca(bb, scenes, ok)
    assert pca.n_components == pca.channels == 4
    assert NeuralLayout(bb, pca).compute(scenes[:1]).shape == (1, 4, 16, 32)


def test_random_unet_differs_from_the_pretrained_but_is_seeded(tiny_components, images):
    pretrained_hash = content_hash(tiny_components.unet)
    sd = SDUNetBackbone(tiny_components)
    rand = build_backbone(
        LayoutConfig(backbone="sd-unet-random", device="cpu", micro_batch=1), tiny_components
    )
    assert isinstance(rand, RandomUNetBackbone) and rand.random_init_seed == 0
    # the same hooks and channels, the model's own VAE; the shared components keep their U-Net
    assert rand.module_paths == sd.module_paths and rand.channels == sd.channels == 160
    assert rand.components.vae is tiny_components.vae and rand.components.unet is not tiny_components.unet
    assert content_hash(tiny_components.unet) == pretrained_hash
    assert not torch.equal(rand.components.unet.conv_in.weight, tiny_components.unet.conv_in.weight)
    f_sd, f_rand = sd(images), rand(images)
    assert f_rand.shape == f_sd.shape and (f_rand - f_sd).abs().mean() > 0.1 * f_sd.abs().mean()
    # deterministic in its seed: the same seed gives the same weights and features, another does not
    again = RandomUNetBackbone(tiny_components, random_init_seed=0)
    assert again.signature() == rand.signature() and torch.equal(again(images), f_rand)
    other = RandomUNetBackbone(tiny_components, random_init_seed=1)
    assert other.signature()["content_hash"] != rand.signature()["content_hash"]
    assert not torch.equal(other(images), f_rand)
    with pytest.raises(ConfigError, match="random_init_seed"):
        from_dict(LayoutConfig, {"backbone": "sd-unet-random", "random_init_seed": -1})


def test_pca_fitted_on_one_backbone_is_refused_by_every_other(tiny_components, vits, scenes):
    """Six rows of Table 1 in miniature: each fitted PCA applies to its own backbone only."""
    backbones = {
        "sd-unet": SDUNetBackbone(tiny_components),
        "sd-unet-random": RandomUNetBackbone(tiny_components),
        "sd-unet-random-1": RandomUNetBackbone(tiny_components, random_init_seed=1),
        "vae-latent": VAELatentBackbone(tiny_components),
        **vits,
    }
    cfg = LayoutConfig(n_components=4, pca_samples=60, device="cpu", batch_size=2)
    pcas = {name: fit_layout_pca(bb, scenes[:2], cfg) for name, bb in backbones.items()}
    for name, bb in backbones.items():
        assert NeuralLayout(bb, pcas[name]).compute(scenes[:1]).shape[:2] == (1, 4)
    for fitted, applied in itertools.permutations(backbones, 2):
        with pytest.raises(LayoutError, match="PCA was fitted on different features"):
            NeuralLayout(backbones[applied], pcas[fitted])
    # what tells them apart, where the channels alone would not
    with pytest.raises(LayoutError, match="backbone: fitted 'dino', now 'clip'"):
        NeuralLayout(backbones["clip"], pcas["dino"])
    with pytest.raises(LayoutError, match="backbone: fitted 'sd-unet', now 'sd-unet-random'"):
        NeuralLayout(backbones["sd-unet-random"], pcas["sd-unet"])
    with pytest.raises(LayoutError, match="random_init_seed: fitted 0, now 1"):
        NeuralLayout(backbones["sd-unet-random-1"], pcas["sd-unet-random"])
