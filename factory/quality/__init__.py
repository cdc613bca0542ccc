"""Per-sample quality checks (NaN/inf, black/constant, label consistency) and bounded retries."""

from factory.quality.checks import (
    QualityConfig,
    QualityResult,
    SegmenterLike,
    check_output,
    check_sample,
    label_consistency,
)
from factory.quality.retry import Attempt, SampleResult, classify, retry_seed, synthesize_with_retries

__all__ = [
    "Attempt",
    "QualityConfig",
    "QualityResult",
    "SampleResult",
    "SegmenterLike",
    "check_output",
    "check_sample",
    "classify",
    "label_consistency",
    "retry_seed",
    "synthesize_with_retries",
]
