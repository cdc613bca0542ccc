"""Bounded retries for rejected samples, each with a new deterministic seed; every attempt logged.

Attempt ``a`` of a sample uses ``sample_seed(job_seed, source_key, variant, attempt=a)``, so a
re-run (or another actor) makes the same attempts and reaches the same accepted image. A
sample is retried only when a new seed can help: a rejected image (NaN, black/constant, low
label consistency). A sample that failed for a reason a seed cannot fix (its prompt edit does
not fit the caption) is not retried. Retries of several samples are batched together.

The returned ``Attempt`` records are what the job writes to its manifest (one row per attempt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from factory.data.sample import SampleRef
from factory.quality.checks import QualityConfig, QualityResult, SegmenterLike, WeatherJudgeLike, check_output
from factory.synth.seeds import sample_seed
from factory.synth.synthesizer import SynthOutput, WorkItem
from factory.synth.variants import Variant

Status = Literal["ok", "rejected", "failed"]
RETRYABLE = ("nonfinite", "black", "constant", "label_consistency", "weather_absent", "missing")


@dataclass
class Attempt:
    """One generation attempt of one sample (a manifest row)."""

    key: str
    source_key: str
    variant: str
    attempt: int
    seed: int
    status: Status
    reason: str | None
    scores: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleResult:
    """The outcome for one (reference, variant): the last attempt's output and quality, and all
    attempts. ``status`` is ``ok`` when some attempt was accepted."""

    key: str
    output: SynthOutput
    quality: QualityResult
    attempts: list[Attempt]

    @property
    def status(self) -> Status:
        return self.attempts[-1].status


def retry_seed(job_seed: int, source_key: str, variant: str, attempt: int) -> int:
    """The seed of attempt ``attempt`` (0 = the first try) of one sample."""
    return sample_seed(job_seed, source_key, variant, attempt)


def classify(quality: QualityResult) -> Status:
    """ok; rejected (a new seed may help); failed (it will not)."""
    if quality.ok:
        return "ok"
    reason = (quality.reason or "").split(":", 1)[0]
    return "rejected" if reason in RETRYABLE else "failed"


def synthesize_with_retries(
    synth: Callable[..., list[SynthOutput]],
    work: Sequence[tuple[SampleRef, Variant]],
    condition: torch.Tensor | None = None,
    *,
    job_seed: int,
    cfg: QualityConfig | None = None,
    labels: Sequence[np.ndarray | None] | None = None,
    segmenter: SegmenterLike | None = None,
    labelids: bool = False,
    batch_size: int | None = None,
    samples: Sequence[Any] | None = None,
    weather_judge: WeatherJudgeLike | None = None,
) -> list[SampleResult]:
    """Generate each (ref, variant), check it, retry rejected ones up to ``cfg.max_attempts``.

    synth: a ``Synthesizer`` (or anything with its call signature:
    ``synth(items, condition, *, samples=..., batch_size=...)``). condition: [N, C, H, W], row i
    for ``work[i]``, or None to let ``synth`` compute it from ``samples`` (the loaded
    references, item i for ``work[i]``; the generation job passes these). labels: per item, the
    reused labels to score (trainIds, or labelIds with ``labelids=True``) or None.
    weather_judge: scores p(the variant's prompt set) per sample (``cfg.min_weather_prob`` gates
    on it). Results come back in the order of ``work``.
    """
    cfg = cfg or QualityConfig()
    n = len(work)
    if condition is not None and condition.shape[0] != n:
        raise ValueError(f"condition has {condition.shape[0]} rows for {n} work items")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} work items")
    if samples is not None and len(samples) != n:
        raise ValueError(f"samples has {len(samples)} entries for {n} work items")
    attempts: list[list[Attempt]] = [[] for _ in range(n)]
    last: list[tuple[SynthOutput, QualityResult] | None] = [None] * n
    pending = list(range(n))
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        items = [
            WorkItem(work[i][0], work[i][1], retry_seed(job_seed, work[i][0].key, work[i][1].name, attempt))
            for i in pending
        ]
        kwargs: dict[str, Any] = {"batch_size": batch_size} if batch_size else {}
        if samples is not None:
            kwargs["samples"] = [samples[i] for i in pending]
        outputs = synth(items, condition[pending] if condition is not None else None, **kwargs)
        if len(outputs) != len(items):
            raise RuntimeError(f"synthesizer returned {len(outputs)} outputs for {len(items)} items")
        retry = []
        for i, out in zip(pending, outputs):
            gt = labels[i] if labels is not None else None
            quality = check_output(
                out, gt, segmenter, cfg, labelids=labelids,
                weather=work[i][1].prompt_set, weather_judge=weather_judge,
            )  # fmt: skip
            status = classify(quality)
            attempts[i].append(
                Attempt(
                    key=out.key,
                    source_key=out.source_key,
                    variant=out.variant,
                    attempt=attempt,
                    seed=out.seed,
                    status=status,
                    reason=quality.reason,
                    scores=quality.scores,
                    timings=out.timings,
                )
            )
            last[i] = (out, quality)
            if status == "rejected":
                retry.append(i)
        pending = retry
    results = []
    for i in range(n):
        out, quality = last[i]  # type: ignore[misc]
        results.append(SampleResult(out.key, out, quality, attempts[i]))
    return results


__all__ = ["RETRYABLE", "Attempt", "SampleResult", "classify", "retry_seed", "synthesize_with_retries"]
