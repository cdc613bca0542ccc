"""Layout fixtures: the tiny SD components and a few procedural scenes as in-memory Samples."""

from __future__ import annotations

import numpy as np
import pytest

from factory.data.procedural import render_scene
from factory.data.sample import Sample
from factory.models import load_components


@pytest.fixture(scope="session")
def tiny_components():
    return load_components("tiny")


@pytest.fixture(scope="session")
def scenes() -> list[Sample]:
    """Five 64x128 procedural street scenes with their labelIds."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(5):
        scene = render_scene(rng, 64, 128)
        out.append(Sample(key=f"scene_{i:06d}_000019", image=scene.image, semantic=scene.labelids))
    return out
