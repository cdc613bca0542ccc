"""Synthesis: prompt sets and variants, per-sample seeds, and the batch-invariant Synthesizer."""

from factory.synth.seeds import sample_seed
from factory.synth.synthesizer import SynthConfig, Synthesizer, SynthOutput, WorkItem
from factory.synth.variants import (
    PromptEdit,
    PromptSets,
    Variant,
    VariantsConfig,
    check_variant_name,
    load_prompt_sets,
    split_synthetic_key,
    synthetic_key,
)

__all__ = [
    "PromptEdit",
    "PromptSets",
    "SynthConfig",
    "SynthOutput",
    "Synthesizer",
    "Variant",
    "VariantsConfig",
    "WorkItem",
    "check_variant_name",
    "load_prompt_sets",
    "sample_seed",
    "split_synthetic_key",
    "synthetic_key",
]
