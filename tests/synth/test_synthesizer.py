"""Synthesizer: batch invariance, seeds, variants, conditions, NaN detection, config validation.

Tiny models (factory.models "tiny") at 32x64 with 2 denoising steps keep every test in seconds.
The ControlNet's zero-initialised output convs are re-drawn with a fixed seed so that the
condition actually changes the image (an untrained ControlNet would add exact zeros).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.config import ConfigError, load_config
from factory.data.sample import SampleRef
from factory.models import load_components, new_controlnet
from factory.synth.synthesizer import SynthConfig, Synthesizer, WorkItem
from factory.synth.variants import PromptEdit, Variant

H, W, C = 32, 64, 4
FOG = Variant("fog", "a photo of a city street, in fog", "sunny", edit=PromptEdit(append="in fog"))
NIGHT = Variant("night", "a photo of a city street, at night", "daylight")


def build_models():
    components = load_components("tiny")
    controlnet = new_controlnet(components, C)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name or "conv_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return components, controlnet


@pytest.fixture(scope="module")
def models():
    return build_models()


def make(models, **kw) -> Synthesizer:
    kw = {"steps": 2, "guidance_scale": 3.0, "batch_size": 3, "scheduler": "ddim", **kw}
    components, controlnet = models
    return Synthesizer(SynthConfig(**kw), components, controlnet)


def items(n: int, variants=(FOG, NIGHT), seed0: int = 100) -> list[WorkItem]:
    return [
        WorkItem(
            SampleRef(f"city_000000_{i:06d}", {"image": Path("unused.png")}),
            variants[i % len(variants)],
            seed0 + i,
        )
        for i in range(n)
    ]


def conditions(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(seed))


def test_batch_equals_one_by_one_exactly(models):
    synth = make(models)
    work, cond = items(3), conditions(3)
    batch = synth(work, cond)
    assert [o.key for o in batch] == [w.key for w in work]
    for i, w in enumerate(work):
        alone = synth([w], cond[i : i + 1])[0]
        assert alone.ok and batch[i].ok
        assert np.array_equal(alone.image, batch[i].image), f"sample {i} depends on its batch"
    # Order inside the batch does not matter either.
    rev = synth(work[::-1], cond.flip(0))[::-1]
    for a, b in zip(batch, rev):
        assert np.array_equal(a.image, b.image)
    # Images are real images, distinct per sample.
    for o in batch:
        assert o.image.shape == (H, W, 3) and o.image.dtype == np.uint8 and o.image.std() > 1
        assert o.size == (H, W) and o.nonfinite == 0 and o.error is None
        assert o.timings["batch_size"] == 3 and o.timings["total_s"] > 0
    assert not np.array_equal(batch[0].image, batch[2].image)


def test_whole_batch_model_calls_agree_to_a_pixel_level(models):
    # micro_batch=3 runs the models on the whole batch (the GPU default): not bit-exact on a
    # CPU, but within one uint8 level.
    work, cond = items(3), conditions(3)
    b3 = make(models, batch_size=3, micro_batch=3)(work, cond)
    b1 = make(models, batch_size=1, micro_batch=1)(work, cond)
    for a, b in zip(b3, b1):
        diff = np.abs(a.image.astype(int) - b.image.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01


def test_decode_latents_is_the_vae_decode(models):
    """decode_latents spells out AutoencoderKL.decode (so the decoder can be compiled): same numbers."""
    synth = make(models).setup()
    vae = models[0].vae
    z = torch.randn(2, 4, H // 4, W // 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vae.decode(z / vae.config.scaling_factor).sample
    assert torch.equal(synth.decode_latents(z), expected)


def test_channels_last_changes_the_layout_not_the_images():
    """synth.channels_last (for GPU convolutions) only changes memory layout: same images to a level."""
    work, cond = items(2), conditions(2)
    models = build_models()
    fresh = copy.deepcopy(models)  # the same weights (new_controlnet draws from the global RNG)
    plain = make(models)(work, cond)
    nhwc = make(fresh, channels_last=True)(work, cond)
    assert fresh[0].unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain, nhwc):
        assert a.ok and b.ok
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_seed_variant_and_condition_each_change_the_image(models):
    synth = make(models, batch_size=1)
    ref = items(1)[0]
    cond = conditions(1)
    base = synth([ref], cond)[0].image
    assert np.array_equal(base, synth([ref], cond)[0].image), "same seed must give the same image"
    other_seed = WorkItem(ref.ref, ref.variant, ref.seed + 1)
    assert not np.array_equal(base, synth([other_seed], cond)[0].image)
    other_variant = WorkItem(ref.ref, NIGHT, ref.seed)
    out = synth([other_variant], cond)[0]
    assert out.prompt == NIGHT.prompt and out.negative_prompt == "daylight"
    assert not np.array_equal(base, out.image)
    assert not np.array_equal(base, synth([ref], conditions(1, seed=5))[0].image)


def test_layout_components_zero_the_rest(models):
    synth = make(models, batch_size=1, layout_components=2)
    work = items(1)
    a, b = conditions(1, 0), conditions(1, 0)
    b[:, 2:] = torch.randn(1, C - 2, H, W)  # only the dropped channels differ
    assert np.array_equal(synth(work, a)[0].image, synth(work, b)[0].image)
    full = make(models, batch_size=1)
    assert not np.array_equal(full(work, a)[0].image, full(work, b)[0].image)


def test_control_window_and_conditioning_scale(models):
    synth = make(models, batch_size=1, steps=4, control_guidance_start=0.25, control_guidance_end=0.75)
    assert synth.control_keep(4) == [0.0, 1.0, 1.0, 0.0]
    # Conditioning scale 0 = no ControlNet: the condition no longer matters.
    off = make(models, batch_size=1, controlnet_conditioning_scale=0.0)
    work = items(1)
    assert np.array_equal(off(work, conditions(1, 0))[0].image, off(work, conditions(1, 7))[0].image)


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_other_schedulers_are_batch_invariant(models, scheduler):
    synth = make(models, scheduler=scheduler, batch_size=2, guidance_scale=1.0)
    work, cond = items(2), conditions(2)
    both = synth(work, cond)
    one = synth(work[1:], cond[1:])[0]
    assert np.array_equal(both[1].image, one.image)
    assert both[0].image.std() > 1


def test_nan_outputs_are_reported_not_written(models):
    components = load_components("tiny")
    controlnet = new_controlnet(components, C)
    with torch.no_grad():
        components.unet.conv_out.bias.fill_(float("nan"))
    synth = Synthesizer(SynthConfig(steps=2, guidance_scale=1.0, batch_size=2), components, controlnet)
    outs = synth(items(2), conditions(2))
    for o in outs:
        assert o.image is None and not o.ok
        assert o.error.startswith("nonfinite") and o.nonfinite == 3 * H * W


def test_bad_prompt_edit_fails_only_that_item(models):
    snowy = Variant(
        "snow",
        "a photo of a snowy city street",
        edit=PromptEdit(replace=(("city street", "snowy city street"),)),
    )
    work = items(2, variants=(snowy,))
    bad_ref = SampleRef("city_000000_000009", {"image": Path("x.png")}, {"caption": "a tram at a stop"})
    work[0] = WorkItem(bad_ref, snowy, 1)
    outs = make(models, batch_size=2)(work, conditions(2))
    assert outs[0].error is not None and "does not occur" in outs[0].error and outs[0].image is None
    assert outs[1].ok and outs[1].image is not None


def test_input_errors_are_clear(models):
    synth = make(models)
    with pytest.raises(ValueError, match=r"expects \[B, 4, H, W\]"):
        synth(items(1), torch.zeros(1, 3, H, W))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        synth(items(1), torch.zeros(1, C, 40, 64))
    with pytest.raises(ValueError, match="2 rows for 1 items"):
        synth(items(1), torch.zeros(2, C, H, W))
    with pytest.raises(ValueError, match="layout_components=9"):
        make(models, layout_components=9)(items(1), conditions(1))


def test_generation_size_resizes_the_condition(models):
    synth = make(models, batch_size=1, height=16, width=32)
    out = synth(items(1), conditions(1))[0]
    assert out.image.shape == (16, 32, 3) and out.size == (16, 32)


def test_setup_loads_models_from_the_config():
    synth = Synthesizer(SynthConfig(base_model="tiny", condition_channels=3, steps=1, guidance_scale=1.0))
    synth.setup()
    sig = synth.signature()
    assert sig["base_model"]["ref"] == "tiny" and sig["controlnet"]["conditioning_channels"] == 3
    assert sig["sampler"]["steps"] == 1 and len(sig["controlnet"]["content_hash"]) == 16


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("steps: 0", "steps"),
        ("guidance_scale: -1", "guidance_scale"),
        ("control_guidance_start: 0.8\ncontrol_guidance_end: 0.5", "control_guidance_end"),
        ("height: 60\nwidth: 128", "height"),
        ("height: 64", "height"),
        ("scheduler: dpm", "scheduler"),
        ("batch_size: 0", "batch_size"),
        ("layout_components: 0", "layout_components"),
        ("dtype: float8", "dtype"),
        ("stepz: 3", "unknown key stepz"),
        ("steps: many", "steps"),
        ("device: tpu", "device"),
        ("compile_mode: fastest", "compile_mode"),
    ],
)
def test_config_errors_name_the_field(tmp_path, yaml_text, match):
    p = tmp_path / "synth.yaml"
    p.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=match):
        load_config(SynthConfig, p)


def test_conditions_from_refs_through_factory_conditions(city_root, tmp_path):
    """The job's path: refs in, samples loaded, conditions computed by a ConditionProvider.

    A corrupt reference and a missing label file fail only their own item, with a reason.
    """
    from factory.conditions import ConditionConfig
    from factory.data.cityscapes import list_cityscapes

    refs = list_cityscapes(city_root / "cityscapes", "train").refs[:3]
    cfg = SynthConfig(
        condition=ConditionConfig(kind="semseg"),
        steps=2,
        guidance_scale=1.0,
        batch_size=2,
        height=32,
        width=64,
    )
    synth = Synthesizer(cfg, load_components("tiny"))  # untrained 3-channel ControlNet built in setup
    bad_image = tmp_path / "corrupt.png"
    bad_image.write_bytes(b"\x89PNG not really")
    no_labels = dict(refs[2].paths)
    no_labels["labelids"] = tmp_path / "missing_labelIds.png"
    work = [
        WorkItem(refs[0], FOG, 1),
        WorkItem(SampleRef(refs[1].key, {**refs[1].paths, "image": bad_image}, refs[1].meta), FOG, 2),
        WorkItem(SampleRef(refs[2].key, no_labels, refs[2].meta), NIGHT, 3),
        WorkItem(refs[2], NIGHT, 3),
    ]
    outs = synth(work)
    assert [o.key for o in outs] == [w.key for w in work]
    assert outs[0].ok and outs[0].image.shape == (32, 64, 3)
    assert outs[1].error.startswith("data:") and "corrupt.png" in outs[1].error and outs[1].image is None
    assert outs[2].error.startswith("data:") and outs[2].image is None
    assert outs[3].ok
    # Same result as passing the provider's condition tensor directly.
    from factory.data.cityscapes import load_sample

    direct = synth([work[0]], synth.condition([load_sample(refs[0])]))[0]
    assert np.array_equal(direct.image, outs[0].image)


def test_condition_channels_must_match_the_controlnet(models):
    from factory.conditions import ConditionConfig

    components, controlnet = models  # a 4-channel ControlNet
    synth = Synthesizer(SynthConfig(condition=ConditionConfig(kind="canny")), components, controlnet)
    with pytest.raises(ValueError, match="3 channels but the ControlNet expects 4"):
        synth.setup()


def test_a_references_variants_share_one_condition(city_root):
    """Conditions are computed once per distinct reference; each item still gets its own image."""
    from factory.conditions import ConditionConfig
    from factory.data.cityscapes import list_cityscapes

    refs = list_cityscapes(city_root / "cityscapes", "train").refs[:2]
    cfg = SynthConfig(
        condition=ConditionConfig(kind="canny"), steps=2, guidance_scale=1.0, height=32, width=64
    )
    synth = Synthesizer(cfg, load_components("tiny")).setup()
    seen: list[int] = []
    provider = synth.condition

    class Counting:
        kind, channels, needs_labels = provider.kind, provider.channels, provider.needs_labels

        def __call__(self, samples):
            seen.append(len(samples))
            return provider(samples)

    synth.condition = Counting()
    work = [WorkItem(refs[0], FOG, 1), WorkItem(refs[0], NIGHT, 2), WorkItem(refs[1], FOG, 3)]
    outs = synth(work)
    assert seen == [2] and all(o.ok for o in outs)
    synth.condition = provider
    alone = synth([work[1]])[0]
    assert np.array_equal(alone.image, outs[1].image)


def test_out_of_memory_while_computing_a_condition_is_not_the_samples_failure(city_root):
    """A CUDA OOM in the condition provider propagates (the job halves its batch and retries);
    it is never recorded as a permanent per-sample failure."""
    import torch

    from factory.data.cityscapes import list_cityscapes
    from factory.synth.synthesizer import SynthConfig, Synthesizer, WorkItem
    from factory.synth.variants import Variant

    class OOMCondition:
        kind = "oom"
        channels = 3
        needs_labels = False

        def __call__(self, samples):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    synth = Synthesizer(SynthConfig(base_model="tiny", steps=1, device="cpu"), condition=OOMCondition())
    ref = list_cityscapes(city_root / "cityscapes", "train").refs[0]
    item = WorkItem(ref, Variant(name="fog", prompt="a city street scene in fog"), seed=1)
    with pytest.raises(torch.OutOfMemoryError):
        synth([item])
