"""The shipped foundation model (models/procedural-base-v1): its files match their recorded
hashes, stock diffusers loads it, and the factory resolves it as a model reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.train.ship import HASHES, RECIPE, ShipError, verify

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "procedural-base-v1"


def test_shipped_files_match_their_hashes():
    hashes = verify(SHIPPED)
    assert any(name.endswith(".safetensors") for name in hashes)
    assert not [p for p in SHIPPED.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert (SHIPPED / RECIPE).is_file()
    recorded = json.loads((SHIPPED / HASHES).read_text())
    assert recorded["model"] == SHIPPED.name and recorded["commit"]


def test_a_changed_file_is_caught(tmp_path):
    import shutil

    copy = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, copy)
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ShipError, match="unet/"):
        verify(copy)


def test_stock_diffusers_loads_and_samples_the_shipped_model():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        SHIPPED, safety_checker=None, requires_safety_checker=False
    )
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


def test_the_factory_resolves_the_shipped_model():
    from factory.models import load_components

    meta = json.loads((SHIPPED / "lumen_base.json").read_text())
    comp = load_components(str(SHIPPED))
    assert comp.noise_scheduler.config.prediction_type == meta["config"]["prediction_type"]
    assert comp.vae.config.scaling_factor == pytest.approx(meta["vae_scaling_factor"])


JUDGES = SHIPPED.parent / "procedural-judges-v1"


def test_shipped_judges_match_their_hashes_and_load_and_score():
    """The comparison's shipped judges: hashed, loadable by their own classes, and still sane on
    fresh renders (the segmenter beats chance by far, the weather judge names clear weather)."""
    from factory.data.labels import id_to_trainid
    from factory.data.procedural import render_scene
    from factory.eval.controllability import WeatherJudge
    from factory.eval.depth import DepthJudge
    from factory.quality.segmenter import Segmenter
    from factory.train.ship import JUDGES as NAMES

    hashes = verify(JUDGES)
    assert set(hashes) == {f"{j}{s}" for j in NAMES for s in (".safetensors", ".json")}
    seg = Segmenter.load(JUDGES / "segmenter")
    depth = DepthJudge.load(JUDGES / "depth")
    weather = WeatherJudge.load(JUDGES / "weather")
    assert seg.cfg.height == depth.cfg.height == weather.cfg.height == 64
    scenes = [render_scene(np.random.default_rng(1000 + i), 64, 128) for i in range(4)]
    images = np.stack([s.image for s in scenes])
    labels = id_to_trainid(np.stack([s.labelids for s in scenes]))
    pred = seg.predict(images)
    assert pred.shape == labels.shape and (pred == labels)[labels != 255].mean() > 0.6
    assert np.isfinite(depth.predict(images)).all()
    assert weather.predict(images).count("clear") >= 3
