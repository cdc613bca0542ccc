"""A private, mutable procedural city for tests that damage files or run cityscapesscripts on it
(the session ``city_root`` fixture is shared and must stay pristine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from factory.data.procedural import generate_city


@pytest.fixture(scope="module")
def small_city_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small_city_src")
    generate_city(root, n_train=3, n_val=2, n_acdc=1, height=64, width=128, seed=7, progress=False)
    return root


@pytest.fixture
def small_city(small_city_src: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, free to damage."""
    dst = tmp_path / "city"
    shutil.copytree(small_city_src, dst)
    return dst
