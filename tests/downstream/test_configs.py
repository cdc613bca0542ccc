"""Every downstream config builds: model and datasets through mmseg's registries, on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "downstream"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("segformer_*.py"))


def test_all_variants_present():
    names = set(CONFIGS)
    for b in range(6):
        assert f"segformer_mit-b{b}_8xb1-160k_cityscapes-1024x1024.py" in names
    assert "segformer_tiny_procedural-64x128.py" in names


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name, city_env):
    from mmengine.config import Config
    from mmseg.registry import DATASETS, MODELS

    cfg = Config.fromfile(str(CONFIG_DIR / name))
    model = MODELS.build(cfg.model)
    assert model.decode_head.num_classes == 19
    if "tiny" in name:
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
    else:  # the standard recipe
        assert cfg.crop_size == (1024, 1024) and cfg.train_cfg.max_iters == 160000
        assert cfg.model.backbone.init_cfg.type == "Pretrained"
        assert cfg.model.backbone.init_cfg.checkpoint.endswith(".pth")
    for loader in ("train_dataloader", "val_dataloader"):
        ds = DATASETS.build(cfg[loader].dataset)
        assert len(ds) > 0
    from downstream.segformer.evaluate import eval_dataset_cfgs

    sets = eval_dataset_cfgs(cfg)
    assert list(sets) == ["CS", "fog", "night", "rain", "snow"]
    for name, ds_cfg in sets.items():
        assert len(DATASETS.build(ds_cfg)) > 0, name
    if "tiny" in name:  # one forward pass at the training crop
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 128), mode="tensor")
        assert out.shape[1] == 19


def test_checkpoint_path_configurable(city_env, monkeypatch, tmp_path):
    from mmengine.config import Config

    monkeypatch.setenv("MIT_PRETRAINED_DIR", str(tmp_path))
    cfg = Config.fromfile(str(CONFIG_DIR / "segformer_mit-b2_8xb1-160k_cityscapes-1024x1024.py"))
    assert cfg.model.backbone.init_cfg.checkpoint == f"{tmp_path}/mit_b2_20220624-66e8bf70.pth"
    assert cfg.model.backbone.num_layers == [3, 4, 6, 3]


def test_a_wrong_config_path_names_the_closest_config():
    from downstream.segformer.train import build_config
    from factory.config import ConfigError

    with pytest.raises(ConfigError) as e:
        build_config(CONFIG_DIR / "segformer_tiny_procedral-64x128.py")
    assert f"did you mean {CONFIG_DIR / 'segformer_tiny_procedural-64x128.py'}?" in str(e.value)
    assert "segformer_mit-b5_8xb1-160k_cityscapes-1024x1024.py" in str(e.value)
