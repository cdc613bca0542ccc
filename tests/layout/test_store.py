"""Layouts computed once: extraction's layout shards feed ControlNet training and generation.

A stored layout equals the one the condition would compute up to one float16 rounding step
(both go through float16 at the feature grid); training reads every reference that has one and computes only the rest; a store
made with another PCA is refused; a ControlNet trained with one PCA refuses another at
generation and gives its recorded recipe as the default.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from factory.conditions import ConditionConfig, build_condition
from factory.config import load_config
from factory.data.cityscapes import load_sample
from factory.jobs.extract_layouts import ExtractConfig
from factory.jobs.extract_layouts import run as extract
from factory.jobs.plan import list_references
from factory.layout import LayoutConfig
from factory.layout.store import LayoutStore, LayoutStoreError
from factory.models import load_components, save_components
from factory.synth.synthesizer import SynthConfig, resolve_recipe
from factory.train.controlnet import RESULT_FILE, ControlNetTrainConfig, train_controlnet
from factory.train.recipe import RecipeError


def _extract(city: Path, out: Path, base: Path, *extra: str) -> Path:
    cfg = load_config(
        ExtractConfig,
        None,
        [f"out={out}", f"dataset.root={city / 'cityscapes'}", f"layout.model={base}", "layout.pca_samples=2000",
         "layout.device=cpu", "executor=in_process", "samples_per_shard=3", "progress=false", *extra],
    )  # fmt: skip
    extract(cfg)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "tiny-sd"
    save_components(load_components("tiny"), folder)
    return folder


@pytest.fixture(scope="module")
def store_dir(city_root, base, tmp_path_factory) -> Path:
    return _extract(city_root, tmp_path_factory.mktemp("layouts") / "out", base)


def _layout_condition(base: Path, pca: Path, store: Path | None = None) -> ConditionConfig:
    return ConditionConfig(
        kind="layout", layout=LayoutConfig(model=str(base), pca=pca, store=store, device="cpu")
    )


def test_stored_layouts_equal_computed_ones(city_root, base, store_dir):
    store = LayoutStore(store_dir)
    refs = list_references(_dataset(city_root))
    assert len(store) == len(refs) == 6
    samples = [load_sample(r, labels=False) for r in refs[:2]]
    computed = build_condition(_layout_condition(base, store_dir / "pca"))
    reading = build_condition(_layout_condition(base, store_dir / "pca", store_dir))
    a, b = computed(samples), reading(samples)
    # the same float16 grid, upsampled the same way: equal up to one float16 rounding step (the
    # backbone's last bits depend on the batch it ran in and the thread count)
    assert a.shape == b.shape == (2, computed.channels, 64, 128)
    assert (a - b).abs().max() <= 2**-9 and (a == b).float().mean() > 0.9
    assert (reading.read, reading.computed) == (2, 0) and (computed.read, computed.computed) == (0, 2)
    assert store.get(samples[0].key).dtype == torch.float16


def _dataset(city_root: Path):
    from factory.data.datasets import DatasetConfig

    return DatasetConfig(root=city_root / "cityscapes", split="train")


def test_a_store_made_with_another_pca_is_refused(city_root, base, store_dir, tmp_path):
    other = _extract(city_root, tmp_path / "other", base, "layout.n_components=8")
    with pytest.raises(LayoutStoreError, match="another recipe"):
        build_condition(_layout_condition(base, store_dir / "pca", other))


def _train(city_root: Path, base: Path, out: Path, condition: dict, limit: int = 4) -> Path:
    cfg = load_config(
        ControlNetTrainConfig,
        None,
        [f"out={out}", f"base_model={base}", f"data.root={city_root / 'cityscapes'}", f"data.limit={limit}",
         "steps=1", "batch_size=2", "threads=1", "validation.every=-1", f"condition={json.dumps(condition)}"],
    )  # fmt: skip
    return train_controlnet(cfg)


def test_training_reads_stored_layouts_and_computes_none(city_root, base, store_dir, tmp_path):
    cond = {"kind": "layout", "layout": {"model": str(base), "pca": str(store_dir / "pca"),
                                         "store": str(store_dir), "device": "cpu"}}  # fmt: skip
    out = _train(city_root, base, tmp_path / "cn", cond)
    meta = json.loads((out / RESULT_FILE).read_text())
    assert meta["layouts"] == {"read": 4, "computed": 0}


def test_training_computes_only_the_references_without_a_stored_layout(city_root, base, store_dir, tmp_path):
    partial = _extract(
        city_root, tmp_path / "partial", base, f"layout.pca={store_dir / 'pca'}", "dataset.limit=2"
    )
    cond = {"kind": "layout", "layout": {"model": str(base), "pca": str(store_dir / "pca"),
                                         "store": str(partial), "device": "cpu"}}  # fmt: skip
    meta = json.loads((_train(city_root, base, tmp_path / "cn", cond) / RESULT_FILE).read_text())
    assert meta["layouts"] == {"read": 2, "computed": 2}


@pytest.fixture(scope="module")
def layout_controlnet(city_root, base, store_dir, tmp_path_factory) -> Path:
    cond = {"kind": "layout", "layout": {"model": str(base), "pca": str(store_dir / "pca"), "device": "cpu"}}
    return _train(city_root, base, tmp_path_factory.mktemp("cn") / "layout", cond, limit=2)


def test_generation_defaults_to_the_controlnets_recipe(layout_controlnet, base, store_dir):
    cfg = resolve_recipe(SynthConfig(controlnet=str(layout_controlnet)))
    assert cfg.base_model == str(base)
    assert cfg.condition.kind == "layout" and Path(cfg.condition.layout.pca) == store_dir / "pca"


def test_a_controlnet_trained_with_one_pca_refuses_another(
    city_root, base, store_dir, layout_controlnet, tmp_path
):
    other = _extract(city_root, tmp_path / "other", base, "layout.sample_seed=1")
    cfg = SynthConfig(controlnet=str(layout_controlnet), condition=_layout_condition(base, other / "pca"))
    with pytest.raises(RecipeError, match=r"not the PCA the ControlNet .* was trained with") as e:
        resolve_recipe(cfg)
    assert str(other / "pca") in str(e.value) and str(store_dir / "pca") in str(e.value)


def test_a_controlnet_refuses_another_base_model(layout_controlnet, tmp_path):
    # the same weights under another reference are the same base model ...
    assert (
        resolve_recipe(SynthConfig(controlnet=str(layout_controlnet), base_model="tiny")).base_model == "tiny"
    )
    # ... other weights are not
    other = load_components("tiny")
    with torch.no_grad():
        next(other.unet.parameters()).add_(1.0)
    save_components(other, tmp_path / "other-base")
    with pytest.raises(RecipeError, match="is not the base model the ControlNet"):
        resolve_recipe(
            SynthConfig(controlnet=str(layout_controlnet), base_model=str(tmp_path / "other-base"))
        )


def test_generation_reads_stored_layouts_and_says_how_many_it_computed(
    city_root, base, store_dir, layout_controlnet, tmp_path
):
    from factory.jobs.generate import GenerateConfig, run

    partial = _extract(
        city_root, tmp_path / "partial", base, f"layout.pca={store_dir / 'pca'}", "dataset.limit=2"
    )
    cond = {"kind": "layout", "layout": {"model": str(base), "pca": str(store_dir / "pca"),
                                         "store": str(partial), "device": "cpu"}}  # fmt: skip
    cfg = load_config(
        GenerateConfig,
        None,
        [f"out={tmp_path / 'gen'}", f"dataset.root={city_root / 'cityscapes'}", "dataset.limit=3",
         "variants.prompts=configs/prompts/procedural.yaml", "variants.sets=[fog]",
         f"synth.controlnet={layout_controlnet}", f"synth.condition={json.dumps(cond)}", "synth.steps=1",
         "synth.device=cpu", "synth.scheduler=ddim", "quality.min_std=0", "executor=in_process",
         "progress=false", "samples_per_shard=3", "batch_size=3"],
    )  # fmt: skip
    summary = run(cfg)
    assert summary.counts == {"ok": 3}
    assert summary.layouts == {"read": 2, "computed": 1}
