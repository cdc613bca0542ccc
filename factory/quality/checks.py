"""Per-sample quality checks, recorded in each synthetic sample's metadata.

A synthetic image ships with the *reference's* labels, so a sample is only worth keeping if
(1) it is an image at all - no NaN/inf (checked on the float decode, before the uint8 cast
turns NaN into black) and not black or near-constant - and (2), when a segmenter is
configured, its content still agrees with those labels: the segmenter's prediction on the
synthetic image is scored against the reused labels (mIoU over the classes present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from factory.config import check
from factory.data.labels import IGNORE_INDEX
from factory.data.sample import DataError
from factory.eval.alignment import miou


class SegmenterLike(Protocol):
    """Anything with ``predict(uint8 HxWx3) -> trainIds HxW`` (factory.quality.segmenter.Segmenter)."""

    def predict(self, images: np.ndarray) -> np.ndarray: ...


class WeatherJudgeLike(Protocol):
    """``probabilities(uint8 BxHxWx3) -> (B, len(WEATHERS))`` (factory.eval.controllability.WeatherJudge)."""

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class QualityConfig:
    """Thresholds for accepting a synthetic sample, and how often to retry a rejected one.

    min_std: pixel standard deviation (uint8 levels, over all pixels and channels) below which
      an image counts as black / near-constant.
    min_label_miou: reject when the segmenter's mIoU against the reused labels is below this;
      None records the score without gating on it. Needs a segmenter.
    max_attempts: attempts per sample (first try + retries with new seeds); >= 1.
    segmenter: a saved ``Segmenter`` (``path`` of ``path.safetensors`` + ``path.json``) for the
      label-consistency score. Read by the jobs, which load it once per actor; the functions
      below take the loaded segmenter as an argument.
    weather_judge: a saved weather classifier (``python -m factory.eval.controllability --out``)
      that scores whether the prompted weather is visible: p(prompted weather) is recorded as
      ``weather_prob`` for variants whose prompt set is one of its weathers.
    min_weather_prob: reject (and retry with a new seed) a sample whose p(prompted weather) is
      below this - the prompt asked for fog and the image shows none; None records only.
    """

    min_std: float = 4.0
    dark_mean: float = 8.0
    min_label_miou: float | None = None
    max_attempts: int = 3
    segmenter: Path | None = None
    weather_judge: Path | None = None
    min_weather_prob: float | None = None

    def __post_init__(self) -> None:
        check(self.min_std >= 0, "min_std", f"must be >= 0, got {self.min_std}")
        check(0 <= self.dark_mean <= 255, "dark_mean", f"must be in [0, 255], got {self.dark_mean}")
        if self.min_label_miou is not None:
            check(
                0.0 <= self.min_label_miou <= 1.0,
                "min_label_miou",
                f"must be in [0, 1] or null, got {self.min_label_miou}",
            )
        check(self.max_attempts >= 1, "max_attempts", f"must be >= 1, got {self.max_attempts}")
        if self.min_weather_prob is not None:
            check(
                0.0 <= self.min_weather_prob <= 1.0,
                "min_weather_prob",
                f"must be in [0, 1] or null, got {self.min_weather_prob}",
            )
            check(
                self.weather_judge is not None,
                "weather_judge",
                "min_weather_prob gates on the weather judge's probability (fix: set quality.weather_judge "
                "to a saved judge, or quality.min_weather_prob: null)",
            )


@dataclass
class QualityResult:
    """``ok`` or not, a short machine-readable ``reason`` (``nonfinite``, ``black``, ``constant``,
    ``label_consistency``, ...) with details after a colon, and the scores (JSON-safe)."""

    ok: bool
    reason: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    # the judge's per-pixel agreement with the reused labels (``agreement_map``), when scored
    agreement: np.ndarray | None = field(default=None, repr=False)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float images are taken as [0, 1] RGB (already checked finite); uint8 passes through."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# The per-pixel agreement map (``<key>.agree.png``, factory.data.members.AGREE_MEMBER)
AGREES, DISAGREES, NO_LABEL = 1, 0, 255


def missing_agreement(where: str | Path) -> DataError:
    """The error of a training set that ignores disagreements (``agreement_ignore``) when a
    sample has no agreement map: the same words for every trainer that reads one."""
    return DataError(
        where,
        "agreement_ignore is on but this sample has no agreement member",
        "generate the shards with quality.segmenter set, or turn agreement_ignore off",
    )


def ignore_disagreements(trainids: np.ndarray, agree: np.ndarray, where: str | Path) -> np.ndarray:
    """``trainids`` with the pixels the judge disagreed with (``agree == DISAGREES``) set to the
    ignore index: generated images drift from their masks, and those pixels would teach the
    wrong class. The map must have the labels' size (else a DataError naming ``where``)."""
    if agree.shape != trainids.shape:
        raise DataError(
            where, f"agreement map {agree.shape} differs from labels {trainids.shape}", "regenerate"
        )
    return np.where(agree == DISAGREES, IGNORE_INDEX, trainids).astype(trainids.dtype)


def judge(
    image: np.ndarray, labels: np.ndarray, segmenter: SegmenterLike, *, labelids: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reused labels), both trainIds at the labels' size.

    ``labels`` are trainIds (255 = ignore), or Cityscapes labelIds with ``labelids=True``. A
    synthetic image may be smaller than its labels: the prediction is resized (nearest) to the
    labels, never the labels to the image.
    """
    gt = labels
    if labelids:
        from factory.data.labels import id_to_trainid

        gt = id_to_trainid(labels)
    pred: np.ndarray = np.asarray(segmenter.predict(image)).astype(np.uint8)
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
    return pred, gt.astype(np.uint8)


def agreement_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """uint8 HxW: AGREES (1) where the judge's class is the reused label's, DISAGREES (0) where
    it is not, NO_LABEL (255) where the label is ignore. Generated images drift from their
    masks, mostly at boundaries; downstream training may ignore the disagreeing pixels."""
    out = np.where(pred == gt, AGREES, DISAGREES).astype(np.uint8)
    out[gt == 255] = NO_LABEL
    return out


def label_consistency(
    image: np.ndarray, labels: np.ndarray, segmenter: SegmenterLike, *, labelids: bool = False
) -> float:
    """mIoU of ``segmenter``'s prediction on ``image`` against the reused ``labels`` (``judge``).
    NaN when neither has a valid pixel."""
    pred, gt = judge(image, labels, segmenter, labelids=labelids)
    return miou(pred, gt)


def weather_probability(image: np.ndarray, weather: str, judge: WeatherJudgeLike) -> float | None:
    """p(``weather``) for one uint8 image, or None when ``weather`` is not one the judge knows
    (a prompt set such as "dusk" is not scored)."""
    from factory.eval.controllability import WEATHERS

    if weather not in WEATHERS:
        return None
    return float(np.asarray(judge.probabilities(image[None]))[0, WEATHERS.index(weather)])


def check_sample(
    image: np.ndarray | None,
    labels: np.ndarray | None = None,
    segmenter: SegmenterLike | None = None,
    cfg: QualityConfig | None = None,
    *,
    labelids: bool = False,
    weather: str | None = None,
    weather_judge: WeatherJudgeLike | None = None,
) -> QualityResult:
    """Check one synthetic image (uint8 HxWx3, or float HxWx3 in [0, 1] before conversion).

    Checks run cheapest first and stop at the first failure: missing image, NaN/inf (float
    input), black / near-constant, then label consistency when ``labels`` and ``segmenter`` are
    given. ``labels``: trainIds (or labelIds with ``labelids=True``).
    """
    cfg = cfg or QualityConfig()
    scores: dict[str, Any] = {}
    if image is None:
        return QualityResult(False, "missing: no image was produced", scores)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        return QualityResult(False, f"shape: expected HxWx3, got {image.shape}", scores)
    if image.dtype != np.uint8:
        bad = int((~np.isfinite(image)).sum())
        scores["nonfinite"] = bad
        if bad:
            return QualityResult(False, f"nonfinite: {bad} of {image.size} values are NaN/inf", scores)
    pixels = to_uint8(image).astype(np.float32)
    std, mean = float(pixels.std()), float(pixels.mean())
    scores.update(std=round(std, 4), mean=round(mean, 4))
    if std < cfg.min_std:
        kind = "black" if mean < cfg.dark_mean else "constant"
        return QualityResult(False, f"{kind}: pixel std {std:.2f} < min_std {cfg.min_std}", scores)
    agreement = None
    if labels is not None and segmenter is not None:
        pred, gt = judge(to_uint8(image), labels, segmenter, labelids=labelids)
        score = miou(pred, gt)
        agreement = agreement_map(pred, gt)
        labelled = agreement != NO_LABEL
        scores["label_miou"] = None if np.isnan(score) else round(score, 6)
        scores["label_agreement"] = (
            round(float((agreement[labelled] == AGREES).mean()), 6) if labelled.any() else None
        )
        if cfg.min_label_miou is not None and not (score >= cfg.min_label_miou):
            return QualityResult(
                False,
                f"label_consistency: mIoU {score:.3f} < min_label_miou {cfg.min_label_miou}",
                scores,
                agreement,
            )
    elif cfg.min_label_miou is not None and labels is not None:
        raise ValueError("quality.min_label_miou is set but no segmenter was given (fix: configure one)")
    if weather_judge is not None and weather:
        p = weather_probability(to_uint8(image), weather, weather_judge)
        if p is not None:
            scores["weather_prob"] = round(p, 6)
            if cfg.min_weather_prob is not None and p < cfg.min_weather_prob:
                return QualityResult(
                    False,
                    f"weather_absent: p({weather}) {p:.3f} < min_weather_prob {cfg.min_weather_prob}",
                    scores,
                    agreement,
                )
    return QualityResult(True, None, scores, agreement)


def check_output(
    output: Any,
    labels: np.ndarray | None = None,
    segmenter: SegmenterLike | None = None,
    cfg: QualityConfig | None = None,
    *,
    labelids: bool = False,
    weather: str | None = None,
    weather_judge: WeatherJudgeLike | None = None,
) -> QualityResult:
    """``check_sample`` for a ``SynthOutput``: its NaN count (taken on the float decode by the
    Synthesizer) and error are folded in, so a NaN sample is rejected as ``nonfinite``."""
    if output.nonfinite:
        return QualityResult(
            False,
            f"nonfinite: {output.nonfinite} decoded values are NaN/inf",
            {"nonfinite": output.nonfinite},
        )
    if output.error is not None:
        return QualityResult(False, output.error, {})
    result = check_sample(
        output.image, labels, segmenter, cfg, labelids=labelids, weather=weather, weather_judge=weather_judge
    )
    result.scores.setdefault("nonfinite", 0)
    return result


__all__ = [
    "AGREES",
    "DISAGREES",
    "NO_LABEL",
    "ignore_disagreements",
    "missing_agreement",
    "QualityConfig",
    "QualityResult",
    "SegmenterLike",
    "WeatherJudgeLike",
    "agreement_map",
    "check_output",
    "check_sample",
    "judge",
    "label_consistency",
    "to_uint8",
    "weather_probability",
]
