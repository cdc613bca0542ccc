"""What the driver checks before Ray starts: every name in the config points at something usable.

Why: a worker that cannot load its models fails in its constructor, on every GPU of the
cluster, minutes into the job. Everything that can be checked without loading weights is
checked here, once, with the file named in the error: the prompt sets, the judges (segmenter,
weather classifier; small: they are loaded), the synthesizer plugin (imported, not called), and for the LUMEN synthesizer the
ControlNet folder and its recorded recipe, the base model, and the condition's artifacts (a
layout's backbone model, PCA artifact and store; a depth model; HED weights).
"""

from __future__ import annotations

import dataclasses

from factory.config import ConfigError
from factory.jobs.generate.config import GenerateConfig
from factory.jobs.generate.stage import load_segmenter, load_weather_judge
from factory.jobs.generate.synthesizers import resolve_plugin
from factory.synth.variants import Variant


def check_synthesizer(cfg: GenerateConfig) -> GenerateConfig:
    """Resolve the ControlNet's recipe on the driver (fails fast, names both sides of a mismatch)
    and check every artifact the LUMEN synthesizer will load."""
    if cfg.synthesizer != "lumen":
        resolve_plugin(cfg.synthesizer)
        return cfg
    from factory.conditions import check_condition_artifacts
    from factory.models import check_controlnet_folder, check_model_ref
    from factory.synth.synthesizer import resolve_recipe

    if cfg.synth.controlnet is not None:
        check_controlnet_folder(cfg.synth.controlnet)
    synth = resolve_recipe(cfg.synth)
    if synth.condition is None:
        raise ConfigError(
            f"synth.controlnet {cfg.synth.controlnet} records no condition and synth.condition is unset "
            "(fix: set synth.condition to the condition the ControlNet was trained on)"
        )
    check_model_ref(synth.base_model or "tiny")
    check_condition_artifacts(synth.condition)
    return dataclasses.replace(cfg, synth=synth)


def preflight(cfg: GenerateConfig) -> tuple[GenerateConfig, list[Variant]]:
    """The checked config (recipe resolved) and its variants; raises on the first problem."""
    variants = cfg.variants.build()
    load_segmenter(cfg.quality)
    load_weather_judge(cfg.quality)
    return check_synthesizer(cfg), variants


__all__ = ["check_synthesizer", "preflight"]
