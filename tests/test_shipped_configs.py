"""Every shipped job/training config validates (the GPU ones cannot run here, so this is their check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import load_config
from factory.jobs.extract_layouts import ExtractConfig
from factory.jobs.generate import GenerateConfig
from factory.train.base import BaseTrainConfig
from factory.train.controlnet import ControlNetTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cls(path: Path):
    """The config class of a shipped YAML, from its folder (and, for training, its name)."""
    if path.parent.name == "train":
        return BaseTrainConfig if path.stem.endswith(("_base", "_foundation")) else ControlNetTrainConfig
    return {"extract": ExtractConfig, "generate": GenerateConfig}[path.parent.name]


@pytest.mark.parametrize(
    "path",
    sorted(p for kind in ("extract", "generate", "train") for p in (CONFIGS / kind).glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_config_validates(path: Path):
    cfg = load_config(_cls(path), path)
    assert cfg is not None


def test_gpu_configs_agree_on_the_layout_recipe():
    """The PCA fitted by the extraction config is applied with the same recipe in training and generation."""
    extract = load_config(ExtractConfig, CONFIGS / "extract" / "cityscapes-sd15.yaml")
    generate = load_config(GenerateConfig, CONFIGS / "generate" / "cityscapes-sd15.yaml")
    train = load_config(ControlNetTrainConfig, CONFIGS / "train" / "cityscapes_sd15_layout.yaml")
    pca = extract.out / "pca"
    # generation takes the layout recipe from the trained ControlNet's folder, never retyped
    assert generate.synth.condition is None and generate.synth.base_model is None
    for other in (train.condition.layout,):
        assert other.pca == pca
        for name in (
            "layers",
            "timestep",
            "noise_seed",
            "n_components",
            "resolution",
            "compile",
            "channels_last",
        ):
            assert getattr(other, name) == getattr(extract.layout, name), name
