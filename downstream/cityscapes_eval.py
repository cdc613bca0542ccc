"""cityscapesscripts' official pixel-level evaluator, runnable under numpy >= 2.4.

Why: ``evalPixelLevelSemanticLabeling`` (the ``csEvalPixelLevelSemanticLabeling`` CLI) calls
``np.in1d``, which numpy deprecated in 2.0 and removed in 2.4. Its default run (the nIoU scores,
``evalInstLevelScore``) and ``evalPixelAccuracy`` stop there with ``AttributeError``. Pinning
numpy below 2.4 for one alias in one tool would hold the whole environment back, so the
evaluator is run here with the alias restored: ``np.in1d`` is defined, only when missing, as
numpy documents it (``np.isin(...).ravel()``). Nothing else changes: the official code computes
the official scores.

Usage (the CLI's own arguments and environment variables, unchanged)::

    CITYSCAPES_DATASET=<root with gtFine/val> CITYSCAPES_RESULTS=<folder of *_pred*.png> \\
        python -m downstream.cityscapes_eval

``CITYSCAPES_EXPORT_DIR`` names the folder of ``resultPixelLevelSemanticLabeling.json``
(default ``$CITYSCAPES_DATASET/evaluationResults``). In-process callers use
``pixel_evaluator()`` instead of importing the module themselves.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Literal

import numpy as np


def _in1d(
    ar1: Any,
    ar2: Any,
    assume_unique: bool = False,
    invert: bool = False,
    *,
    kind: Literal["sort", "table"] | None = None,
) -> np.ndarray:
    """numpy's removed ``in1d``: ``isin`` flattened (numpy 2.0's deprecation note)."""
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert, kind=kind).ravel()


def ensure_in1d() -> None:
    """Define ``np.in1d`` if this numpy lacks it (never replaces numpy's own)."""
    if not hasattr(np, "in1d"):
        np.in1d = _in1d  # type: ignore[attr-defined]


def pixel_evaluator() -> ModuleType:
    """The official ``evalPixelLevelSemanticLabeling`` module, with ``np.in1d`` available.

    The module reads ``CITYSCAPES_DATASET`` / ``CITYSCAPES_EXPORT_DIR`` when first imported
    (its default ground-truth search and result file), as the CLI does.
    """
    ensure_in1d()
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling

    return evalPixelLevelSemanticLabeling


def main(argv: list[str] | None = None) -> int:
    """Run the official CLI's ``main`` with ``argv`` (default: this process's arguments)."""
    ev = pixel_evaluator()
    sys.argv = ["csEvalPixelLevelSemanticLabeling", *(sys.argv[1:] if argv is None else argv)]
    ev.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
