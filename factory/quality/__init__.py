"""Per-sample quality checks (NaN/inf, black/constant, label consistency) and bounded retries."""

from factory.quality.checks import (
    AGREES,
    DISAGREES,
    NO_LABEL,
    QualityConfig,
    QualityResult,
    SegmenterLike,
    agreement_map,
    check_output,
    check_sample,
    judge,
    label_consistency,
)
from factory.quality.retry import Attempt, SampleResult, classify, retry_seed, synthesize_with_retries

__all__ = [
    "AGREES",
    "DISAGREES",
    "NO_LABEL",
    "Attempt",
    "QualityConfig",
    "QualityResult",
    "SampleResult",
    "SegmenterLike",
    "agreement_map",
    "check_output",
    "check_sample",
    "classify",
    "judge",
    "label_consistency",
    "retry_seed",
    "synthesize_with_retries",
]
