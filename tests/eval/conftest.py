"""Single-threaded torch for these tests (the shared 2-core machines; see tests/synth/conftest.py),
and what the end-to-end tests of compare and sweep share: a saved tiny base model and tiny judges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny base model saved as a folder (a ControlNet records and reloads it by path)."""
    from factory.models import load_components, save_components

    base = tmp_path_factory.mktemp("tiny_base") / "base"
    save_components(load_components("tiny"), base)
    return base


@pytest.fixture(scope="session")
def tiny_judges(tmp_path_factory) -> Path:
    """Judges after 3 steps (segmenter ``seg``, ``depth``, ``weather``): they score, they do not judge."""
    from factory.eval.controllability import WeatherJudge, WeatherJudgeConfig
    from factory.eval.depth import DepthJudge, DepthJudgeConfig
    from factory.quality.segmenter import Segmenter, SegmenterConfig

    torch.set_num_threads(1)
    judges = tmp_path_factory.mktemp("judges")
    Segmenter.train_procedural(SegmenterConfig(steps=3, n_scenes=4)).save(judges / "seg")
    DepthJudge.train_procedural(DepthJudgeConfig(steps=3, n_scenes=4, width_mult=4)).save(judges / "depth")
    WeatherJudge.train_procedural(WeatherJudgeConfig(steps=3, n_scenes=2, width_mult=4)).save(
        judges / "weather"
    )
    return judges
