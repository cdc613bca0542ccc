"""factory.models: built-in references, the local-folder round trip, offline hub errors."""

from __future__ import annotations

import pytest
import torch

from factory.models import (
    ModelError,
    build_tokenizer,
    content_hash,
    default_dtype,
    encode_prompts,
    load_components,
    load_controlnet,
    new_controlnet,
    resolve_device,
    save_components,
)


@pytest.fixture(scope="module")
def tiny():
    return load_components("tiny")


def test_tiny_is_deterministic_and_sized(tiny):
    again = load_components("tiny")
    assert tiny.content_hash == again.content_hash
    assert len(tiny.content_hash) == 16
    assert tiny.sample_size == (64, 128)
    assert tiny.vae_scale_factor == 4
    assert tiny.dtype == torch.float32
    # the tiny decoder has 9 layers so the layout positions 2, 5, 8 exist
    assert len(tiny.unet.up_blocks) * (tiny.unet.config.layers_per_block + 1) == 9
    sched = tiny.noise_scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)


def test_content_hash_tracks_weights():
    a = torch.nn.Linear(3, 2)
    h = content_hash(a)
    assert content_hash(a) == h
    with torch.no_grad():
        a.weight[0, 0] += 1e-3
    assert content_hash(a) != h


def test_tokenizer_needs_no_download_and_knows_caption_words():
    tok = build_tokenizer(32)
    assert tok.tokenize("a foggy city street at night") == [
        "a</w>",
        "foggy</w>",
        "city</w>",
        "street</w>",
        "at</w>",
        "night</w>",
    ]
    # unknown words fall back to byte-level pieces, never to <unk>
    ids = tok("zxqv")["input_ids"]
    assert tok.unk_token_id not in ids[1:-1]


def test_encode_prompts_shapes_and_distinct(tiny):
    emb = encode_prompts(tiny, ["", "a rainy street"])
    assert emb.shape == (2, 32, 32)
    assert not torch.equal(emb[0], emb[1])
    assert torch.equal(encode_prompts(tiny, [""])[0], emb[0])


def test_save_and_reload_local_folder(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = save_components(tiny, tmp_path / "tiny-sd")
    loaded = load_components(str(folder))
    assert loaded.content_hash == tiny.content_hash
    assert loaded.sample_size == (64, 128)
    assert loaded.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.tokenizer.tokenize("snowy road") == ["snowy</w>", "road</w>"]
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert content_hash(pipe.unet) == content_hash(tiny.unet)


def test_controlnet_from_tiny_takes_pixel_resolution_condition(tiny, tmp_path):
    net = new_controlnet(tiny, 20)
    latent = torch.randn(1, 4, 16, 32)
    cond = torch.randn(1, 20, 64, 128)
    with torch.no_grad():
        down, mid = net(
            latent,
            100,
            encoder_hidden_states=encode_prompts(tiny, [""]),
            controlnet_cond=cond,
            return_dict=False,
        )
    assert down[0].shape == (1, 32, 16, 32)
    net.save_pretrained(tmp_path / "cn")
    again = load_controlnet(tmp_path / "cn")
    assert content_hash(again) == content_hash(net)


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is there
    with pytest.raises(ModelError, match="not available locally.*download.*local diffusers folder"):
        load_components("someone/not-a-real-sd-checkpoint")


def test_bad_local_references(tmp_path):
    with pytest.raises(ModelError, match="folder does not exist"):
        load_components(str(tmp_path / "missing"))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ModelError, match="missing vae, text_encoder, tokenizer, scheduler"):
        load_components(str(tmp_path / "half"))
    with pytest.raises(ModelError, match="no ControlNet here"):
        load_controlnet(tmp_path / "half")


def test_device_and_dtype_defaults():
    assert resolve_device("cpu") == torch.device("cpu")
    assert default_dtype("cpu") == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")


def test_part_builders_match_load_components(tiny):
    from factory.models import build_text_encoder, build_unet, build_vae

    assert content_hash(build_unet("tiny")) == content_hash(tiny.unet)
    assert content_hash(build_vae("tiny")) == content_hash(tiny.vae)
    assert content_hash(build_text_encoder("tiny")[0]) == content_hash(tiny.text_encoder)
    with pytest.raises(ModelError, match="not a built-in reference"):
        build_unet("runwayml/stable-diffusion-v1-5")
