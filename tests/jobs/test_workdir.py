"""Relative paths in a job that runs in Ray's uploaded working-dir copy: refused with the fix.

The copy is laid out as Ray lays it out (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>``)
with what `ray job submit --working-dir .` uploads: tracked files such as configs/, and model
folders without their ``*.safetensors`` (cluster/runtime_env.yaml), but no data/ or outputs/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import ConfigError, absolute_paths, load_config, path_fields
from factory.jobs.generate import GenerateConfig
from factory.jobs.workdir import check_uploaded_paths, uploaded_working_dir
from factory.train.controlnet import ControlNetTrainConfig

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("synth.controlnet", "synth.base_model", "synth.condition.layout.model")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    pkg = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (pkg / "configs" / "prompts").mkdir(parents=True)
    (pkg / "configs" / "prompts" / "procedural.yaml").write_text("uploaded")
    (pkg / "models" / "procedural-base-v1" / "unet").mkdir(parents=True)  # configs only, no weights
    (pkg / "factory").mkdir()
    return pkg


def _cfg(*overrides: str) -> GenerateConfig:
    return load_config(GenerateConfig, REPO / "configs/generate/procedural.yaml", list(overrides))


ABSOLUTE = ("out=/shared/out", "dataset.root=/shared/city/cityscapes", "synth.controlnet=/shared/controlnet")


def test_uploaded_working_dir_is_the_package_folder(copy: Path):
    assert uploaded_working_dir(copy) == copy.resolve()
    assert uploaded_working_dir(copy / "factory") == copy.resolve()
    assert uploaded_working_dir(REPO) is None
    assert uploaded_working_dir(copy.parent) is None  # working_dir_files itself is not a copy


def test_absolute_paths_pass_and_tracked_relative_inputs_are_found_in_the_copy(copy: Path):
    cfg = _cfg(*ABSOLUTE)
    assert ("variants.prompts", Path("configs/prompts/procedural.yaml")) in path_fields(cfg)
    check_uploaded_paths(cfg, folders=FOLDERS, cwd=copy)  # the prompt file was uploaded


@pytest.mark.parametrize(
    ("override", "field", "says"),
    [
        ("out=outputs/generate/procedural", "out=outputs/generate/procedural", "Ray deletes after the job"),
        (
            "dataset.root=data/procedural/cityscapes",
            "dataset.root=data/procedural/cityscapes",
            "not uploaded",
        ),
        (
            "synth.controlnet=outputs/controlnet/procedural_layout",
            "synth.controlnet=outputs/controlnet",
            "not uploaded",
        ),
        (
            "synth.base_model=models/procedural-base-v1",
            "synth.base_model=models/procedural-base-v1",
            "no weights",
        ),
    ],
)
def test_a_relative_path_that_cannot_work_is_refused_with_the_fix(copy: Path, override, field, says):
    cfg = _cfg(*ABSOLUTE, override)
    with pytest.raises(ConfigError) as e:
        check_uploaded_paths(cfg, folders=FOLDERS, cwd=copy)
    msg = str(e.value)
    assert msg.startswith(field) and says in msg
    assert str(copy.resolve()) in msg and "=$PWD/" in msg


def test_hub_ids_and_builtin_models_are_not_paths(copy: Path):
    cfg = _cfg(*ABSOLUTE, "synth.base_model=stable-diffusion-v1-5/stable-diffusion-v1-5")
    check_uploaded_paths(cfg, folders=FOLDERS, cwd=copy)
    check_uploaded_paths(_cfg(*ABSOLUTE, "synth.base_model=tiny"), folders=FOLDERS, cwd=copy)


def test_outside_an_uploaded_copy_relative_paths_are_fine(tmp_path: Path):
    check_uploaded_paths(_cfg(), folders=FOLDERS, cwd=tmp_path)


def test_absolute_paths_makes_recorded_paths_hold_from_any_directory(tmp_path: Path, monkeypatch):
    """What the ControlNet trainer records (base model, PCA, store) is made absolute first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    cfg = load_config(
        ControlNetTrainConfig,
        REPO / "configs/train/procedural_controlnet_layout.yaml",
        ["base_model=models/base", "condition.layout.model=models/base"],
    )
    done = absolute_paths(cfg)
    assert done.base_model == str(tmp_path / "models" / "base")
    assert done.condition.layout.model == str(tmp_path / "models" / "base")
    assert done.condition.layout.pca == tmp_path / "outputs/layouts/procedural/pca"
    assert done.data.root == tmp_path / "data/procedural/cityscapes"
    assert all(p.is_absolute() for _, p in path_fields(done))
    kept = absolute_paths(load_config(ControlNetTrainConfig, None, ["base_model=tiny"]))
    assert kept.base_model == "tiny"  # not a folder: a model reference, kept


def test_a_plugin_synthesizer_is_not_held_to_the_lumen_model_folders(copy: Path, monkeypatch):
    """The synth.* folders are the LUMEN synthesizer's: a plugin job (the configs' relative
    synth.controlnet left in) runs; its own paths are still checked."""
    from factory.jobs.generate import run

    monkeypatch.chdir(copy)
    cfg = _cfg("out=outputs/x", "synthesizer=tests/jobs/doubles.py:build")
    with pytest.raises(ConfigError, match="^out=outputs/x is relative"):
        run(cfg)  # refused for its output, not for synth.controlnet
    assert not (copy / "outputs").exists()
