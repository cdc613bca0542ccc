"""Oracle twins: the procedural renderer's own weather on the same reference scenes.

A synthesizer plugin for the generation job (``synthesizer=factory.synth.oracle:build``): each
work item's image is ``factory.data.procedural.apply_weather`` of the reference's clear image,
with the depth from its disparity and camera and the weather named by the variant's prompt set
(fog, night, rain, snow). The labels are the reference's, as for LUMEN, so the shards are a
drop-in "real + oracle" mix for the DG and multi-task benchmarks: what perfectly label-faithful
synthesis of the test weathers would give - the ceiling LUMEN's samples are measured against.

Why through the generation job: the oracle shards get the same checks, resume, manifest, card
and member layout as LUMEN's, so the benchmarks read both the same way. Only procedural data has
this oracle (a real dataset has no renderer); ground, emissive pixels and lamps are estimated
from the depth and the image, as ``apply_weather`` does when no scene is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from factory.data.sample import Sample
from factory.synth.synthesizer import SynthOutput, WorkItem


class OracleSynthesizer:
    """The weather the variant's prompt set names, rendered on the clear reference."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def setup(self) -> OracleSynthesizer:
        return self

    def signature(self) -> dict[str, Any]:
        return {"synthesizer": "procedural-oracle", "renderer": "factory.data.procedural.apply_weather"}

    def preview(self, sample: Sample) -> np.ndarray | None:
        """The contact sheet's condition column: the depth the weather is rendered with (near = bright)."""
        from factory.eval.depth import reference_depth

        try:
            depth = reference_depth(sample)
        except Exception:
            return None
        inv = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-3), 0.0)
        grey = (255 * inv / max(float(inv.max()), 1e-9)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    def render(self, item: WorkItem, sample: Sample) -> np.ndarray:
        from factory.data.procedural import SKY_DEPTH, WEATHERS, apply_weather
        from factory.eval.depth import reference_depth

        weather = item.variant.prompt_set
        if weather not in WEATHERS:
            raise ValueError(
                f"variant {item.variant.name!r}: prompt set {weather!r} is not a procedural weather "
                f"({list(WEATHERS)}); fix: variants.sets from {list(WEATHERS)}"
            )
        depth = reference_depth(sample).astype(np.float32)
        depth[depth <= 0] = SKY_DEPTH  # invalid disparity: the sky
        return apply_weather(sample.image, depth, weather, np.random.default_rng(item.seed))

    def __call__(self, items: Sequence[WorkItem], *, samples: Sequence[Sample]) -> list[SynthOutput]:
        outs = []
        for it, s in zip(items, samples):
            image: np.ndarray | None = None
            error = None
            try:
                image = self.render(it, s)
            except Exception as e:  # no disparity/camera, an unknown weather: a failed row, not a dead job
                error = f"{type(e).__name__}: {e}"
            outs.append(
                SynthOutput(
                    key=it.key,
                    source_key=it.ref.key,
                    variant=it.variant.name,
                    image=image,
                    error=error,
                    seed=it.seed,
                    prompt=it.variant.prompt,
                    negative_prompt=it.variant.negative_prompt,
                    size=s.size,
                )
            )
        return outs


def build(cfg: Any) -> OracleSynthesizer:
    return OracleSynthesizer(cfg)


__all__ = ["OracleSynthesizer", "build"]
