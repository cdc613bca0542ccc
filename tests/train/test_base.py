"""The offline base model: trains, saves a pipeline folder that factory.models and stock diffusers load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.config import ConfigError, load_config
from factory.models import load_components
from factory.train.base import BaseTrainConfig, train_base
from factory.train.controlnet import ControlNetTrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def tiny_base(out, **kw) -> BaseTrainConfig:
    """A base-model recipe that trains in seconds (2 VAE and 2 U-Net steps on 5 scenes)."""
    recipe = dict(n_scenes=5, vae_steps=2, vae_batch_size=2, vae_block_out_channels=(16, 32, 32))
    recipe |= dict(unet_steps=2, batch_size=2, warmup_steps=1, preview_steps=1, preview_per_weather=1)
    return BaseTrainConfig(out=out, **{**recipe, **kw})


def test_base_trains_and_resolves_as_model_reference(tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg = tiny_base(tmp_path / "base")
    out = train_base(cfg)
    meta = json.loads((out / "lumen_base.json").read_text())
    assert meta["unet_steps_done"] == 2 and set(meta["weather_stats"]) == set(cfg.weathers)
    assert (out / "preview.png").is_file()
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    comp = load_components(str(out))
    assert comp.vae.config.block_out_channels == (16, 32, 32) or list(comp.vae.config.block_out_channels) == [
        16,
        32,
        32,
    ]
    assert comp.vae.config.scaling_factor == pytest.approx(meta["vae_scaling_factor"])
    assert comp.content_hash != load_components("tiny").content_hash
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(
        "a city street scene in fog",
        height=64,
        width=128,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert img.shape == (1, 64, 128, 3) and np.isfinite(img).all()


def test_base_config_errors():
    with pytest.raises(ConfigError, match="weathers"):
        BaseTrainConfig(weathers=("hail",))
    with pytest.raises(ConfigError, match="captions"):
        BaseTrainConfig(captions={"clear": "x"})
    with pytest.raises(ConfigError, match="prediction_type"):
        BaseTrainConfig(prediction_type="sample")
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        BaseTrainConfig(zero_terminal_snr=True)  # epsilon cannot be inverted at zero SNR


def test_base_v_prediction_zero_snr_is_saved_and_samples(tmp_path):
    """The schedule options reach the saved scheduler, factory.models and a stock pipeline."""
    from diffusers import StableDiffusionPipeline

    cfg = tiny_base(
        tmp_path / "base", preview_per_weather=0, prediction_type="v_prediction", zero_terminal_snr=True
    )
    out = train_base(cfg)
    sched = load_components(str(out)).noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    assert sched.config.rescale_betas_zero_snr and sched.config.timestep_spacing == "trailing"
    assert float(sched.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)  # the last step is pure noise
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.scheduler.set_timesteps(2)
    assert int(pipe.scheduler.timesteps[0]) == 999  # sampling starts at the pure-noise step
    img = pipe("a city street scene in fog", height=64, width=128, num_inference_steps=2, output_type="np")
    assert np.isfinite(img.images).all()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cls = BaseTrainConfig if "base" in name or "foundation" in name else ControlNetTrainConfig
    cfg = load_config(cls, CONFIGS / name)
    if cls is ControlNetTrainConfig:
        assert Path(name).stem.endswith(cfg.condition.kind), (
            "a ControlNet config is named after its condition"
        )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        f"{part}.{k}": v
        for part in ("unet", "text_encoder", "vae")
        for k, v in load_file(next((folder / part).glob("*.safetensors"))).items()
    }


def test_base_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Killed after the step-2 checkpoint, a rerun continues there and ends bit-identical."""
    from factory.train import base

    recipe = dict(unet_steps=4, checkpoint_every=2, preview_per_weather=0, lr_schedule="cosine")
    straight = train_base(tiny_base(tmp_path / "a", **recipe))
    assert not (tmp_path / "a.ckpt").exists()  # removed once the model is saved

    calls = {"n": 0}
    real_save = base.Checkpoint.save

    def save_then_die(self, **phase):
        real_save(self, **phase)
        if "unet_phase" in phase:
            calls["n"] += 1
            raise KeyboardInterrupt("killed after the first U-Net checkpoint")

    monkeypatch.setattr(base.Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_base(tiny_base(tmp_path / "b", **recipe))
    monkeypatch.setattr(base.Checkpoint, "save", real_save)
    state = torch.load(tmp_path / "b.ckpt" / "latest.pt", weights_only=True)
    assert len(state["unet_phase"]["losses"]) == 2
    resumed = train_base(tiny_base(tmp_path / "b", **recipe))
    meta = json.loads((resumed / "lumen_base.json").read_text())
    assert meta["resumed"] and meta["unet_steps_done"] == 4 and len(meta["loss_curves"]["unet"]) == 1
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_base_refuses_a_checkpoint_of_another_recipe(tmp_path):
    from factory.train.base import Checkpoint

    out = tmp_path / "base"
    Checkpoint(out, tiny_base(out)).save(vae_phase={"losses": [1.0]})
    with pytest.raises(ValueError, match="another recipe.*delete"):
        train_base(tiny_base(out, unet_steps=3))
