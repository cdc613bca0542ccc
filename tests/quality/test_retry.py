"""Retry policy: bounded, deterministic new seeds, every attempt logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from factory.data.sample import SampleRef
from factory.models import load_components, new_controlnet
from factory.quality import QualityConfig, classify, retry_seed, synthesize_with_retries
from factory.quality.checks import QualityResult
from factory.synth.synthesizer import SynthConfig, Synthesizer, SynthOutput, WorkItem
from factory.synth.variants import Variant

FOG = Variant("fog", "a photo of a city street, in fog")
RAIN = Variant("rain", "a photo of a city street, in rain")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded: two OpenMP threads on the shared 2-core machine spin-wait (~80x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def refs(n: int) -> list[SampleRef]:
    return [SampleRef(f"city_000000_{i:06d}", {"image": Path("unused.png")}) for i in range(n)]


class SeedImages:
    """A stand-in generator (no model): the image is noise drawn from the item's seed, and black
    when the seed is in ``black`` - a seed-dependent failure such as an fp16 overflow."""

    def __init__(self, black: set[int]):
        self.black = black
        self.calls: list[list[int]] = []

    def __call__(self, items: list[WorkItem], condition: torch.Tensor, **kw) -> list[SynthOutput]:
        assert condition.shape[0] == len(items)
        self.calls.append([it.seed for it in items])
        outs = []
        for it in items:
            img = np.random.default_rng(it.seed).integers(0, 256, (8, 16, 3), dtype=np.uint8)
            if it.seed in self.black:
                img[:] = 0
            outs.append(
                SynthOutput(it.key, it.ref.key, it.variant.name, img, None, it.seed, it.variant.prompt, "")
            )
        return outs


def test_retries_use_deterministic_new_seeds_and_log_every_attempt():
    work = [(r, v) for r in refs(3) for v in (FOG, RAIN)]
    seeds0 = [retry_seed(7, r.key, v.name, 0) for r, v in work]
    seeds1 = [retry_seed(7, r.key, v.name, 1) for r, v in work]
    # Sample 0 fails twice then succeeds; sample 3 fails on every attempt; the rest pass at once.
    black = {seeds0[0], seeds1[0], seeds0[3], seeds1[3], retry_seed(7, work[3][0].key, "rain", 2)}
    synth = SeedImages(black)
    cond = torch.zeros(len(work), 1, 8, 16)
    res = synthesize_with_retries(synth, work, cond, job_seed=7, cfg=QualityConfig(max_attempts=3))

    assert [r.key for r in res] == [f"{r.key}__{v.name}" for r, v in work]
    assert synth.calls[0] == seeds0  # first pass: everything, in order
    assert synth.calls[1] == [seeds1[0], seeds1[3]]  # retries batched together
    assert len(synth.calls) == 3  # bounded by max_attempts

    first = res[0]
    assert first.status == "ok" and [a.status for a in first.attempts] == ["rejected", "rejected", "ok"]
    assert [a.attempt for a in first.attempts] == [0, 1, 2]
    assert [a.seed for a in first.attempts] == [retry_seed(7, work[0][0].key, "fog", a) for a in range(3)]
    assert first.attempts[0].reason.startswith("black:")
    assert first.output.seed == first.attempts[-1].seed and first.quality.ok

    worst = res[3]
    assert worst.status == "rejected" and len(worst.attempts) == 3 and worst.output.image.max() == 0
    for r in (res[1], res[2], res[4], res[5]):
        assert r.status == "ok" and len(r.attempts) == 1 and r.attempts[0].seed == r.output.seed

    # Same inputs, same attempts: a resumed job or another actor reaches the same outcome.
    again = synthesize_with_retries(
        SeedImages(black), work, cond, job_seed=7, cfg=QualityConfig(max_attempts=3)
    )
    assert [[(a.seed, a.status) for a in r.attempts] for r in again] == [
        [(a.seed, a.status) for a in r.attempts] for r in res
    ]
    # A different job seed gives different seeds.
    other = synthesize_with_retries(SeedImages(set()), work, cond, job_seed=8)
    assert [r.output.seed for r in other] != seeds0


def test_failures_a_seed_cannot_fix_are_not_retried():
    assert classify(QualityResult(True)) == "ok"
    assert classify(QualityResult(False, "nonfinite: 3 values")) == "rejected"
    assert classify(QualityResult(False, "label_consistency: mIoU 0.1 < 0.3")) == "rejected"
    assert classify(QualityResult(False, "prompt: word 'x' does not occur")) == "failed"


def test_nan_model_is_retried_then_rejected_with_the_real_synthesizer():
    components = load_components("tiny")
    controlnet = new_controlnet(components, 3)
    with torch.no_grad():
        components.unet.conv_out.bias.fill_(float("nan"))
    synth = Synthesizer(SynthConfig(steps=1, guidance_scale=1.0, batch_size=2), components, controlnet)
    work = [(r, FOG) for r in refs(2)]
    res = synthesize_with_retries(
        synth, work, torch.zeros(2, 3, 32, 64), job_seed=0, cfg=QualityConfig(max_attempts=2)
    )
    for r, (ref, v) in zip(res, work):
        assert r.status == "rejected" and r.output.image is None
        assert [a.reason.split(":")[0] for a in r.attempts] == ["nonfinite", "nonfinite"]
        assert [a.seed for a in r.attempts] == [retry_seed(0, ref.key, v.name, a) for a in (0, 1)]
        assert r.attempts[0].timings["total_s"] > 0


def test_without_a_condition_the_synthesizer_gets_the_samples_of_the_pending_items():
    """The generation job's path: no precomputed condition; retries pass only their samples."""
    work = [(r, FOG) for r in refs(3)]
    black = {retry_seed(1, work[1][0].key, "fog", 0)}
    seen: list[list[str]] = []

    def synth(items, condition, *, samples):
        assert condition is None
        seen.append(list(samples))
        return SeedImages(black)(items, torch.zeros(len(items), 1, 8, 16))

    res = synthesize_with_retries(synth, work, job_seed=1, samples=["s0", "s1", "s2"])
    assert seen == [["s0", "s1", "s2"], ["s1"]]
    assert [r.status for r in res] == ["ok", "ok", "ok"] and len(res[1].attempts) == 2
    with pytest.raises(ValueError, match="samples has 2 entries for 3"):
        synthesize_with_retries(synth, work, job_seed=1, samples=["s0", "s1"])
