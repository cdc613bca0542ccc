"""Classical weather augmentation (the DG benchmark's practitioner baseline) and paired intervals."""

from __future__ import annotations

import numpy as np
import pytest

from downstream.benchmarks.common import format_intervals, paired_intervals


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((64, 128, 3), np.uint8)
    img[:32] = (200, 150, 90)  # sky-ish (BGR)
    img[32:] = (80, 80, 80)  # road
    return np.clip(img.astype(np.int16) + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("weather", ["fog", "rain", "snow", "night"])
def test_each_weather_changes_the_image_the_expected_way_and_keeps_labels(weather):
    from downstream.segformer.classical import ClassicalWeather

    np.random.seed(0)
    img = _image()
    labels = np.random.randint(0, 19, (64, 128)).astype(np.uint8)
    out = ClassicalWeather(weathers=[weather])({"img": img.copy(), "gt_seg_map": labels.copy()})
    assert out["classical_weather"] == weather
    assert out["img"].shape == img.shape and out["img"].dtype == np.uint8
    assert np.array_equal(out["gt_seg_map"], labels)  # labels are the reference's
    diff = np.abs(out["img"].astype(np.int16) - img).mean()
    assert diff > 3, f"{weather} barely changed the image (mean |diff| {diff:.2f})"
    brighter = out["img"].mean() - img.mean()
    if weather == "night":
        assert brighter < -40  # a strong darkening
    if weather == "snow":
        assert brighter > 5  # whiter
    if weather == "fog":
        assert brighter > 0 and out["img"].std() < img.std()  # a veil: lighter, less contrast


def test_the_draw_follows_numpys_global_seed_like_the_other_random_transforms():
    from downstream.segformer.classical import ClassicalWeather

    t = ClassicalWeather()
    runs = []
    for _ in range(2):
        np.random.seed(123)
        runs.append([t({"img": _image(i)})["img"] for i in range(4)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    np.random.seed(124)
    other = [t({"img": _image(i)})["img"] for i in range(4)]
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], other))


def test_unknown_weather_is_refused():
    from downstream.segformer.classical import ClassicalWeather

    with pytest.raises(ValueError, match="sandstorm"):
        ClassicalWeather(weathers=["fog", "sandstorm"])


def test_build_config_puts_the_augmentation_after_the_image_loader(city_env, tmp_path):
    from downstream.segformer.train import DEFAULT_CONFIG, build_config
    from factory.config import ConfigError

    cfg = build_config(DEFAULT_CONFIG, augment="classical", ratio=0.25, work_dir=tmp_path, validate=False)
    ds = cfg.train_dataloader.dataset
    assert ds["type"] == "MixedDataset" and ds["ratio"] == 0.25
    real = [s["type"] for s in ds["real"]["pipeline"]]
    extra = [s["type"] for s in ds["synth"]["pipeline"]]
    assert "ClassicalWeather" not in real
    assert extra == [real[0], "ClassicalWeather", *real[1:]]
    with pytest.raises(ConfigError, match="not both"):
        build_config(DEFAULT_CONFIG, synth="x/*.tar", augment="classical", work_dir=tmp_path)


def test_paired_intervals_match_scipys_paired_t_test():
    from scipy import stats

    real = [
        dict(Avg=10.0, CS=50.0),
        dict(Avg=12.0, CS=52.0),
        dict(Avg=11.0, CS=49.0),
        dict(Avg=13.0, CS=51.0),
    ]
    lumen = [
        dict(Avg=11.5, CS=50.5),
        dict(Avg=12.9, CS=51.0),
        dict(Avg=12.8, CS=49.5),
        dict(Avg=14.1, CS=52.0),
    ]
    got = paired_intervals({"real": real, "real + LUMEN": lumen})["real + LUMEN"]
    for c in ("Avg", "CS"):
        test = stats.ttest_rel([r[c] for r in lumen], [r[c] for r in real])
        ci = test.confidence_interval(0.95)
        assert got[c]["ci"] == pytest.approx([ci.low, ci.high], abs=1e-9)
        assert got[c]["diff"] == pytest.approx(np.mean([a[c] - b[c] for a, b in zip(lumen, real)]))
        assert got[c]["n"] == 4 and got[c]["method"] == "paired t"
    # the Avg gain is consistent across seeds: its interval excludes zero
    assert got["Avg"]["ci"][0] > 0
    lines = format_intervals({"real + LUMEN": got}, ("CS", "Avg"))
    assert "paired t over 4 seeds" in lines[0] and lines[-1].startswith("real + LUMEN")


def test_one_seed_has_no_interval_and_unpaired_runs_are_refused():
    one = paired_intervals({"real": [dict(Avg=1.0)], "real + LUMEN": [dict(Avg=2.0)]})
    assert one["real + LUMEN"]["Avg"] == {"diff": 1.0, "n": 1, "ci": None, "method": "paired t"}
    with pytest.raises(ValueError, match="not paired"):
        paired_intervals({"real": [dict(Avg=1.0)], "real + LUMEN": [dict(Avg=2.0), dict(Avg=3.0)]})
