"""A trivial deterministic synthesizer for the job's infrastructure tests.

It stands in for the diffusion model where the test is about Ray, shards, resume and faults,
not about images: a seeded colour shift plus noise of the reference image. Like the real
Synthesizer it draws from one generator per sample (seeded with the item's seed), so a sample
is the same whatever its batch, actor or order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from factory.synth.synthesizer import SynthOutput, WorkItem


class JitterSynthesizer:
    def __init__(self, cfg=None):
        self.cfg = cfg
        self.calls: list[int] = []

    def setup(self) -> JitterSynthesizer:
        return self

    def signature(self) -> dict:
        return {"synthesizer": "jitter-test-double"}

    def preview(self, sample) -> np.ndarray:
        return (255 - sample.image).astype(np.uint8)

    def __call__(self, items: Sequence[WorkItem], *, samples) -> list[SynthOutput]:
        self.calls.append(len(items))
        outs = []
        for it, s in zip(items, samples):
            rng = np.random.default_rng(it.seed)
            shift = rng.integers(-40, 41, size=3)
            noise = rng.integers(-8, 9, size=s.image.shape)
            img = np.clip(s.image.astype(np.int16) + shift + noise, 0, 255).astype(np.uint8)
            outs.append(
                SynthOutput(
                    key=it.key,
                    source_key=it.ref.key,
                    variant=it.variant.name,
                    image=img,
                    error=None,
                    seed=it.seed,
                    prompt=it.variant.prompt,
                    negative_prompt=it.variant.negative_prompt,
                    size=img.shape[:2],
                )
            )
        return outs


def build(cfg) -> JitterSynthesizer:
    return JitterSynthesizer(cfg)


class MissingModelSynthesizer(JitterSynthesizer):
    """A synthesizer whose model folder is missing: ``setup`` raises, as a real one would.

    Before raising it appends its process id and the time to ``<out>/setup_attempts.log``, so a
    test counts how many times any worker, in any process, tried to set it up, and when.
    """

    def setup(self) -> MissingModelSynthesizer:
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "setup_attempts.log", "a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
        raise FileNotFoundError("model folder /x missing")


def build_missing_model(cfg) -> MissingModelSynthesizer:
    return MissingModelSynthesizer(cfg)
