"""CLIP score on known embeddings and through a tiny CLIP folder; the weather judge learns the
procedural weathers and round-trips."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.eval.controllability import (
    WEATHERS,
    ClipScorer,
    WeatherJudge,
    WeatherJudgeConfig,
    clip_score,
    render_weather_set,
    weather_accuracy,
)

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "procedural-base-v1"


def test_clip_score_on_known_embeddings():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    txt = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, math.sqrt(3.0)]])  # 0, 90, 180, 60 degrees
    np.testing.assert_allclose(clip_score(img, txt), [100.0, 0.0, 0.0, 50.0], atol=1e-9)


def test_weather_accuracy():
    assert weather_accuracy(["fog", "night", "rain"], ["fog", "snow", "rain"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal, non-zero"):
        weather_accuracy([], [])


def test_clip_scorer_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": 679, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 32, "bos_token_id": 677, "eos_token_id": 678,
            "pad_token_id": 678}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    for f in (SHIPPED / "tokenizer").iterdir():  # the shipped text encoder's tokenizer (its vocabulary fits)
        shutil.copy(f, folder / f.name)
    scorer = ClipScorer(folder)
    images = render_weather_set(WeatherJudgeConfig(n_scenes=1))[0][:3]
    prompts = ["a city street scene in fog", "a city street scene at night", "a city street scene in snow"]
    scores = scorer.score(images, prompts)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 100)).all()
    assert scorer.pixel_values(images).shape == (3, 3, 32, 32)  # shortest side to the crop, centre crop
    np.testing.assert_allclose(scorer.score(images[:1], prompts[:1]), scores[:1], rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no CLIP model here"):
        ClipScorer(tmp_path / "nothing")


def test_weather_judge_learns_the_procedural_weathers(tmp_path):
    cfg = WeatherJudgeConfig(n_scenes=16, steps=80, width_mult=8)
    judge = WeatherJudge.train_procedural(cfg)
    images, labels = render_weather_set(WeatherJudgeConfig(n_scenes=4, seed=11))  # unseen scenes
    predicted = judge.predict(images)
    assert weather_accuracy(predicted, [WEATHERS[k] for k in labels]) >= 0.8  # chance: 0.2
    judge.save(tmp_path / "weather")
    assert WeatherJudge.load(tmp_path / "weather").predict(images) == predicted
