"""The condition interface shared by every provider, and its error type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from factory.data.sample import Sample


class ConditionError(ValueError):
    """A condition cannot be built or computed. The message names the cause and the fix."""


@runtime_checkable
class ConditionProvider(Protocol):
    """Samples -> conditioning tensor (B, channels, H, W) float32 at pixel resolution.

    ``needs_labels``: whether the provider reads the samples' decoded labels (the GT semseg
    baseline does). Callers load samples with ``load_sample(ref, labels=provider.needs_labels)``:
    decoding labels nobody reads costs time, and a label-free condition must not need them.
    """

    kind: str
    channels: int
    needs_labels: bool

    def signature(self) -> dict[str, Any]: ...

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor: ...
