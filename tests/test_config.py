"""The typed config loader: unknown keys, wrong types and bad values fail naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from factory.config import ConfigError, check, from_dict, load_config, to_dict


@dataclass
class Inner:
    steps: int = 20
    scale: float = 7.5
    mode: Literal["ddim", "unipc"] = "ddim"

    def __post_init__(self):
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")


@dataclass
class Outer:
    name: str
    out: Path = Path("outputs")
    inner: Inner = field(default_factory=Inner)
    variants: list[str] = field(default_factory=list)
    size: tuple[int, int] = (64, 128)
    seed: int | None = None


def test_defaults_and_nested_values():
    cfg = from_dict(
        Outer, {"name": "x", "inner": {"steps": 3, "scale": 2}, "variants": ["fog"], "size": [32, 64]}
    )
    assert cfg.inner.steps == 3 and cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)
    assert cfg.size == (32, 64) and cfg.variants == ["fog"] and cfg.out == Path("outputs")
    assert to_dict(cfg)["out"] == "outputs"


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"name": "x", "bogus": 1}, "unknown key bogus"),
        ({"name": "x", "inner": {"stepz": 1}}, "unknown key inner.stepz"),
        ({"name": "x", "inner": {"steps": "many"}}, "inner.steps: expected an integer"),
        ({"name": "x", "inner": {"steps": True}}, "inner.steps: expected an integer"),
        ({"name": "x", "inner": {"mode": "euler"}}, "inner.mode: 'euler' is not one of"),
        ({"name": "x", "inner": {"steps": 0}}, "inner.steps: must be >= 1"),
        ({"name": "x", "size": [1, 2, 3]}, "size: expected 2 items"),
        ({}, "missing required key name"),
    ],
)
def test_errors_name_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert needle in str(e.value)


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  steps: 4\n")
    cfg = load_config(Outer, p, ["inner.scale=1.5", "variants=[fog, night]", "seed=3"])
    assert (cfg.inner.steps, cfg.inner.scale, cfg.variants, cfg.seed) == (4, 1.5, ["fog", "night"], 3)
    with pytest.raises(ConfigError, match=r"c\.yaml: inner\.steps"):
        load_config(Outer, p, ["inner.steps=-1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_an_unknown_key_names_the_closest_allowed_one():
    with pytest.raises(
        ConfigError, match=r"unknown key inner\.stepz in Inner \(did you mean inner\.steps\?\)"
    ):
        from_dict(Outer, {"name": "x", "inner": {"stepz": 1}})
    with pytest.raises(ConfigError) as e:  # nothing close: no guess, the allowed keys only
        from_dict(Outer, {"name": "x", "zzz": 1})
    assert "did you mean" not in str(e.value) and "allowed keys" in str(e.value)


def test_a_missing_config_file_lists_the_configs_beside_it_or_in_config_dir(tmp_path):
    (tmp_path / "procedural.yaml").write_text("name: a\n")
    (tmp_path / "cityscapes.yaml").write_text("name: b\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, tmp_path / "procedual.yaml")
    assert f"did you mean {tmp_path / 'procedural.yaml'}?" in str(e.value)
    assert "cityscapes.yaml, procedural.yaml" in str(e.value)
    with pytest.raises(ConfigError) as e:  # no such folder: the configs of the tool's folder
        load_config(Outer, tmp_path / "nowhere" / "x.yaml", config_dir=tmp_path)
    assert f"configs in {tmp_path}/: cityscapes.yaml, procedural.yaml" in str(e.value)


def test_a_bare_config_name_is_looked_for_in_config_dir(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "procedural.yaml").write_text("name: a\n")
    (tmp_path / "unrelated.yaml").write_text("name: b\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, "procedurl.yaml", config_dir="configs")
    assert "did you mean configs/procedural.yaml?" in str(e.value) and "unrelated" not in str(e.value)
