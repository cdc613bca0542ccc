"""Prompt sets, prompt edits (LUMEN Fig. 3), variant key safety and per-sample seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import ConfigError, load_config
from factory.data.sample import check_key
from factory.synth.seeds import sample_seed
from factory.synth.variants import (
    PromptEdit,
    Variant,
    VariantsConfig,
    check_variant_name,
    load_prompt_sets,
    split_synthetic_key,
    synthetic_key,
)

ROOT = Path(__file__).resolve().parents[2]
WEATHER = ROOT / "configs" / "prompts" / "weather.yaml"


def test_shipped_prompt_file_has_acdc_weathers_and_more():
    ps = load_prompt_sets(WEATHER)
    assert {"fog", "rain", "snow", "night"} <= set(ps.sets)
    assert len(ps.sets) >= 7  # dawn/dusk, overcast, night-rain, ...
    for s in ps.sets.values():
        assert len(s.phrasings) >= 2, s.name
        assert s.negative_prompt.strip(), s.name
    variants = ps.variants(phrasings="all")
    prompts = [v.prompt for v in variants]
    assert len(set(prompts)) == len(prompts), "every phrasing must give a distinct prompt"
    for v in variants:
        check_key(synthetic_key("aachen_000000_000019", v.name))
        # Every edit keeps the scene description of the base caption (Fig. 3 style edits).
        assert "city street" in v.prompt, v.prompt


def test_edit_by_replacement_and_appending():
    caption = "a photo of a city street"
    assert PromptEdit(append="at night").apply(caption) == "a photo of a city street, at night"
    assert PromptEdit(replace=(("city street", "snowy city street"),)).apply(caption) == (
        "a photo of a snowy city street"
    )
    both = PromptEdit(replace=(("a photo", "a foggy photo"),), append="low visibility")
    assert both.apply(caption) == "a foggy photo of a city street, low visibility"
    assert PromptEdit(prompt="literal").apply(caption) == "literal"
    # Whole words only: "city" inside "velocity" is not a match.
    with pytest.raises(ValueError, match="does not occur"):
        PromptEdit(replace=(("city", "town"),)).apply("a velocity sign")


def test_variant_renders_per_sample_caption():
    v = load_prompt_sets(WEATHER).variants(["snow"], phrasings="all")[1]
    assert v.prompt_for(None) == v.prompt
    assert v.prompt_for("a photo of a city street with a tram") == (
        "a photo of a snowy city street with a tram, snow on the road and cars"
    )


def test_variant_naming_first_all_repeats():
    ps = load_prompt_sets(WEATHER)
    assert [v.name for v in ps.variants(["fog", "night"])] == ["fog", "night"]
    assert [v.name for v in ps.variants(["fog"], phrasings="all")] == ["fog-p0", "fog-p1", "fog-p2"]
    rep = ps.variants(["rain"], repeats=2)
    assert [v.name for v in rep] == ["rain-r0", "rain-r1"]
    assert rep[0].prompt == rep[1].prompt


def test_unknown_prompt_set_is_a_clear_error(tmp_path):
    ps = load_prompt_sets(WEATHER)
    with pytest.raises(KeyError, match="unknown prompt set 'hail'.*available"):
        ps.variants(["fog", "hail"])
    cfg = VariantsConfig(prompts=WEATHER, sets=["fog", "hail"])
    with pytest.raises(ConfigError, match="unknown prompt set 'hail'"):
        cfg.build()
    with pytest.raises(ConfigError, match="repeats"):
        VariantsConfig(repeats=0)


def test_variants_config_from_yaml(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text(f"prompts: {WEATHER}\nsets: [night, dawn]\nphrasings: all\n")
    variants = load_config(VariantsConfig, p).build()
    assert [v.name for v in variants][:3] == ["night-p0", "night-p1", "night-p2"]
    p.write_text("sets: [fog]\nphrasing: all\n")
    with pytest.raises(ConfigError, match="unknown key phrasing"):
        load_config(VariantsConfig, p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("base_caption: ''\nsets: {fog: {phrasings: [{append: fog}]}}", "base_caption"),
        ("base_caption: a street\nsets: {fog: {phrasings: []}}", "sets.fog.phrasings"),
        ("base_caption: a street\nsets: {fog: {phrasings: [{append: ''}]}}", r"sets.fog.phrasings\[0\]"),
        ("base_caption: a street\nsets: {fog: {phrasings: [{prompt: '  '}]}}", "prompt.*empty"),
        ("base_caption: a street\nsets: {fog: {phrasings: [{replace: {city: town}}]}}", "does not occur"),
        ("base_caption: a street\nsets: {fog: {phrasings: [{apend: x}]}}", "unknown key.*apend"),
        ("base_caption: a street\nsets: {fog.x: {phrasings: [{append: x}]}}", "unsafe"),
        ("base_caption: a street\nsets: {fog__x: {phrasings: [{append: x}]}}", "unsafe"),
        ("base_caption: a street\nsets: {}", "no prompt set"),
    ],
)
def test_bad_prompt_files_name_file_and_field(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_prompt_sets(p)
    assert str(p) in str(info.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompt_sets(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["", "fog.1", "fog/1", "..", "fog__x", "fog x", "_fog", "fog_", "nébula"])
def test_unsafe_variant_names_rejected(name):
    with pytest.raises(ValueError, match="unsafe"):
        check_variant_name(name)
    with pytest.raises(ValueError):
        Variant(name=name, prompt="a street")


def test_variant_needs_a_prompt():
    with pytest.raises(ValueError, match="prompt is empty"):
        Variant(name="fog", prompt="  ")


def test_synthetic_keys_round_trip():
    key = synthetic_key("aachen_000000_000019", "night-rain-p1")
    assert key == "aachen_000000_000019__night-rain-p1"
    assert split_synthetic_key(key) == ("aachen_000000_000019", "night-rain-p1")
    with pytest.raises(ValueError):
        synthetic_key("bad.key", "fog")
    with pytest.raises(ValueError):
        split_synthetic_key("aachen_000000_000019")


def test_sample_seed_is_stable_and_63_bit():
    s = sample_seed(7, "aachen_000000_000019", "fog")
    # Pinned value: a change here changes every generated dataset (hashlib, not Python's hash).
    assert s == sample_seed(7, "aachen_000000_000019", "fog", 0)
    assert 0 <= s < 2**63
    assert s == 4068250410671862072
    others = {
        sample_seed(8, "aachen_000000_000019", "fog"),
        sample_seed(7, "aachen_000000_000020", "fog"),
        sample_seed(7, "aachen_000000_000019", "rain"),
        sample_seed(7, "aachen_000000_000019", "fog", 1),
        sample_seed(7, "aachen_000000_000019", "fog", 2),
    }
    assert s not in others and len(others) == 5
    # Field boundaries are unambiguous.
    assert sample_seed(0, "a_b", "c") != sample_seed(0, "a", "b_c")
    with pytest.raises(ValueError):
        sample_seed(0, "a", "fog", -1)
    with pytest.raises(TypeError):
        sample_seed("0", "a", "fog")  # type: ignore[arg-type]
