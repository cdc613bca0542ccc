"""The recipe a trained ControlNet folder records, and the one reader of it.

Why: a ControlNet is only valid with the base model, the condition and (for neural layouts)
the exact PCA artifact it was trained with - a layout projected by another PCA is another
coordinate system. ``factory.train.controlnet`` writes ``lumen_training.json`` into the
folder; generation reads it here, takes it as the default for everything it fixes and refuses
a base model or PCA that differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_FILE = "lumen_training.json"


class RecipeError(ValueError):
    """A ControlNet folder's recipe is missing, unreadable, or contradicts the configuration."""


@dataclass(frozen=True)
class ControlNetRecipe:
    """What a ControlNet was trained with (``lumen_training.json``)."""

    folder: Path
    base_model_ref: str
    base_model_hash: str | None
    condition: dict[str, Any]  # the trainer's ConditionConfig as a mapping
    pca_hash: str | None  # sha256 (16 hex) of the PCA's .safetensors, for layout conditions
    steps: int | None
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> ControlNetRecipe | None:
        """The recipe of ``folder``; None when the folder has none (a ControlNet from elsewhere)."""
        folder = Path(folder)
        path = folder / RESULT_FILE
        if not folder.is_dir():
            raise RecipeError(
                f"synth.controlnet: {folder} is not a folder (fix: the output folder of "
                "`python -m factory.train.controlnet`, or a diffusers ControlNetModel folder)"
            )
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
            base = meta["base_model"]
            condition = meta["config"]["condition"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RecipeError(
                f"{path}: unreadable ControlNet recipe ({e}); fix: retrain or restore the file"
            ) from None
        return cls(
            folder=folder,
            base_model_ref=str(base["ref"]),
            base_model_hash=base.get("content_hash"),
            condition=dict(condition),
            pca_hash=meta.get("pca_artifact_hash"),
            steps=meta.get("steps"),
            meta=meta,
        )


def pca_file_hash(pca: str | Path | None) -> str | None:
    """sha256 (16 hex) of a PCA artifact's ``.safetensors`` (None when there is none)."""
    from factory.atomic import file_digest
    from factory.layout.pca import pca_files

    if pca is None:
        return None
    return file_digest(pca_files(pca)[0])


__all__ = ["RESULT_FILE", "ControlNetRecipe", "RecipeError", "pca_file_hash"]
