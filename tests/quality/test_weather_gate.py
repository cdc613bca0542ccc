"""The weather gate: a sample whose prompted weather the judge cannot see is rejected and retried.

Unit cases use a stand-in judge with fixed probabilities (the gate's logic); the job case runs
the real generation job (test-double synthesizer, in-process) with a real, briefly trained
weather judge, records p(prompted weather) per sample and gates on an unreachable threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from factory.config import ConfigError, from_dict
from factory.eval.controllability import WEATHERS
from factory.quality import QualityConfig, check_sample
from factory.shards import Manifest, read_shard_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from jobcfg import make_cfg  # noqa: E402


class FixedJudge:
    """Says every image shows ``weather`` with probability ``p`` (the rest spread evenly)."""

    def __init__(self, weather: str, p: float):
        self.row = np.full(len(WEATHERS), (1 - p) / (len(WEATHERS) - 1))
        self.row[WEATHERS.index(weather)] = p

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.tile(self.row, (len(images), 1))


IMAGE = np.random.default_rng(0).integers(0, 255, (16, 32, 3), dtype=np.uint8)


def test_the_prompted_weathers_probability_is_recorded_and_gated():
    judge = FixedJudge("fog", 0.3)
    recorded = check_sample(IMAGE, cfg=QualityConfig(), weather="fog", weather_judge=judge)
    assert recorded.ok and recorded.scores["weather_prob"] == pytest.approx(0.3)
    cfg = QualityConfig(weather_judge=Path("judge"), min_weather_prob=0.5)
    gated = check_sample(IMAGE, cfg=cfg, weather="fog", weather_judge=judge)
    assert not gated.ok and gated.reason.startswith("weather_absent: p(fog) 0.300 < min_weather_prob 0.5")
    other = check_sample(IMAGE, cfg=cfg, weather="night", weather_judge=judge)  # p(night) = 0.175
    assert not other.ok
    assert check_sample(IMAGE, cfg=QualityConfig(weather_judge=Path("j"), min_weather_prob=0.1), weather="fog",
                        weather_judge=judge).ok  # fmt: skip
    unknown = check_sample(IMAGE, cfg=cfg, weather="dusk", weather_judge=judge)  # not a judged weather
    assert unknown.ok and "weather_prob" not in unknown.scores


def test_a_weather_threshold_without_a_judge_is_a_config_error():
    with pytest.raises(ConfigError, match="weather_judge"):
        from_dict(QualityConfig, {"min_weather_prob": 0.5})
    with pytest.raises(ConfigError, match="min_weather_prob"):
        from_dict(QualityConfig, {"min_weather_prob": 1.5, "weather_judge": "x"})


@pytest.fixture(scope="module")
def weather_judge(tmp_path_factory) -> Path:
    from factory.eval.controllability import WeatherJudge, WeatherJudgeConfig

    cfg = WeatherJudgeConfig(n_scenes=2, steps=4, batch_size=4, width_mult=4, augment=False)
    path = tmp_path_factory.mktemp("weather") / "judge"
    WeatherJudge.train_procedural(cfg).save(path)
    return path


def test_the_job_records_the_weather_probability_and_retries_samples_without_their_weather(
    city_root, tmp_path, weather_judge
):
    from factory.jobs.generate import run

    judge = f"quality.weather_judge={weather_judge}"
    out = tmp_path / "scored"
    summary = run(make_cfg(city_root, out, "executor=in_process", judge, limit=2))
    assert summary.counts == {"ok": 4}
    for s in read_shard_samples(sorted((out / "shards").glob("*.tar"))):
        meta = json.loads(s["json"])
        assert 0.0 <= meta["quality"]["weather_prob"] <= 1.0, meta["quality"]

    gated = tmp_path / "gated"
    summary = run(
        make_cfg(
            city_root, gated, "executor=in_process", judge, "quality.min_weather_prob=1.0",
            "quality.max_attempts=2", limit=2,
        )
    )  # fmt: skip
    assert summary.counts == {"rejected": 4}
    rows = Manifest(gated / "manifest").rows()
    assert len(rows) == 8 and all(r["reason"].startswith("weather_absent: p(") for r in rows)
    assert len({r["seed"] for r in rows}) == 8  # each retry had a new seed


def test_a_missing_weather_judge_stops_the_job_before_any_work(city_root, tmp_path):
    from factory.jobs.generate import run

    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="weather judge file missing"):
        run(make_cfg(city_root, out, "executor=in_process", f"quality.weather_judge={tmp_path / 'nope'}"))
    assert not (out / "plan.json").exists()
