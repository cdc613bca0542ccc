"""python -m factory.eval.sweep: the front and knee on known points, and the whole sweep at the
tiniest budget (tiny base model, ControlNets after 2 steps, N in {2, 4}, a 2 x 2 sampling grid)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.config import ConfigError
from factory.eval import compare, sweep
from factory.eval.sweep import knee, main, pareto_front

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ front and knee


def test_the_front_keeps_the_undominated_points_sorted_by_diversity():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.2)]
    assert pareto_front(points) == [0, 1, 3]  # (0.4, 0.4) and (0.5, 0.2) lose to (0.5, 0.5)


def test_equal_points_do_not_dominate_each_other():
    points = [(0.5, 0.5), (0.2, 0.8), (0.5, 0.5), (0.5, 0.4)]
    assert pareto_front(points) == [1, 0, 2]  # (0.5, 0.4) is dominated by both copies


def test_the_knee_of_a_convex_front_is_its_bulge():
    # x + y - 1 on the [0, 1]-scaled front: 0, 0.6, 0.4, 0 - the bulge wins, not the ends
    points = [(0.0, 1.0), (0.8, 0.8), (0.9, 0.5), (1.0, 0.0), (0.3, 0.3)]
    assert knee(points) == 1


def test_the_knee_uses_both_axes_scaled_to_the_front():
    # the same front with diversity in [0.2, 0.3] and alignment in [0.1, 0.6]: same knee
    points = [(0.2 + 0.1 * x, 0.1 + 0.5 * y) for x, y in [(0.0, 1.0), (0.8, 0.8), (0.9, 0.5), (1.0, 0.0)]]
    assert knee(points) == 1


def test_a_dominated_point_is_never_the_knee():
    points = [(0.0, 1.0), (0.5, 0.6), (1.0, 0.0), (0.45, 0.55)]  # the last sits near the bulge, behind it
    assert knee(points) == 1


def test_knee_ties_go_to_the_higher_alignment_then_the_earlier_point():
    assert knee([(0.0, 1.0), (0.8, 0.7), (0.7, 0.8), (1.0, 0.0)]) == 2  # both 0.5 above the chord
    assert knee([(0.0, 1.0), (0.7, 0.7), (1.0, 0.0), (0.7, 0.7)]) == 1  # equal points: the first


def test_a_front_without_a_bulge_recommends_its_most_aligned_end():
    assert knee([(0.0, 1.0), (1.0, 0.0)]) == 0  # two points: no knee
    assert knee([(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]) == 0  # on the chord
    assert knee([(0.0, 1.0), (0.3, 0.3), (1.0, 0.0)]) == 0  # sagging below it
    assert knee([(0.4, 0.6)]) == 0


# ------------------------------------------------------------------------------ end to end

COMPONENTS = (2, 4)
SCALES = (0.5, 1.0)
ENDS = (0.01, 1.0)  # 0.01 of 3 sampling steps: the ControlNet acts in none of them


def sweep_argv(city_root: Path, base: Path, judges: Path, dinov2: Path, out: Path) -> list[str]:
    return [
        "--data", str(city_root / "cityscapes"), "--out", str(out), "--base-model", str(base),
        "--components", *map(str, COMPONENTS), "--backbones", "sd-unet", "dinov2",
        "--scales", *map(str, SCALES), "--guidance-ends", *map(str, ENDS),
        "--steps", "2", "--pca-samples", "300",
        "--train-config", str(REPO / "configs/train/procedural_controlnet_layout.yaml"),
        # a 2-step ControlNet must change the uint8 images for the guidance checks to see it
        "--train-overrides", "batch_size=2", "lr=0.02", "warmup_steps=0", "condition.layout.micro_batch=1",
        f"condition.layout.dinov2={dinov2}",
        "--n", "2", "--seeds", "2", "--weather-refs", "1", "--weathers", "fog", "--sample-steps", "3",
        "--guidance", "1.0", "--prompts", str(REPO / "configs/prompts/procedural.yaml"),
        "--segmenter", str(judges / "seg"), "--depth-judge", str(judges / "depth"),
        "--weather-judge", str(judges / "weather"), "--threads", "1",
    ]  # fmt: skip


def tiny_dinov2(folder: Path) -> Path:
    """A random 1-layer DINOv2 with 8 channels (the backbone axis' second value in this branch)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, patch_size=8, image_size=64)  # fmt: skip
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def swept(city_root, tiny_base, tiny_judges, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    out = root / "out"
    argv = sweep_argv(city_root, tiny_base, tiny_judges, tiny_dinov2(root / "dinov2"), out)
    return {"argv": argv, "out": out, "report": main(argv)}


@pytest.mark.slow
def test_sweep_json_has_every_point_with_scores_and_the_knee(swept):
    out = swept["out"]
    data = json.loads((out / "sweep.json").read_text())
    names = {p["name"] for p in data["points"]}
    sampling = {f"sd-unet-n4 s{s:g} e{e:g}" for s in SCALES for e in ENDS if (s, e) != (1.0, 1.0)}
    assert names == {"sd-unet-n2", "sd-unet-n4", "dinov2", "no condition", *sampling}
    by_name = {p["name"]: p for p in data["points"]}
    assert by_name["sd-unet-n4"]["axes"] == ["layout", "sampling"]  # (1, 1) on it is its layout point
    for p in data["points"]:
        s = p["scores"]
        assert set(compare.COLUMNS) <= set(s) and 0 <= s["miou"] <= 1 and 0 <= s["lpips"] <= 4
        assert math.isfinite(s["fd"]) and 0 <= s["text"] <= 1 and Path(p["grid"]).is_file()
    assert by_name["sd-unet-n2"]["n_components"] == 2 and by_name["sd-unet-n2"]["backbone"] == "sd-unet"
    assert by_name["dinov2"]["backbone"] == "dinov2" and by_name["dinov2"]["n_components"] == max(COMPONENTS)
    assert {c["label"] for c in data["columns"]} >= {"mIoU", "LPIPS(judge)"}
    assert "no condition" not in data["front"] and data["knee"] in data["front"]
    assert data["recommendation"]["point"] == data["knee"]
    assert data["references"]["real reference"]["lpips"] is None
    assert data["settings"]["training"]["steps"] == 2 and data["settings"]["sampling"]["steps"] == 3
    md = (out / "sweep.md").read_text()
    assert f"**{data['knee']}**" in md and "| sd-unet-n2 |" in md and "knee" in md


@pytest.mark.slow
def test_each_variant_has_its_own_controlnet_with_n_conditioning_channels(swept):
    from factory.layout import PCAArtifact

    out = swept["out"]
    for name, n in [*((f"sd-unet-n{n}", n) for n in COMPONENTS), ("dinov2", max(COMPONENTS))]:
        config = json.loads((out / "controlnets" / name / "config.json").read_text())
        assert config["conditioning_channels"] == n
        recipe = json.loads((out / "controlnets" / name / "lumen_training.json").read_text())
        assert recipe["steps"] == 2 and recipe["config"]["seed"] == 0  # one budget for every variant
        assert recipe["condition"]["signature"]["n_components"] == n
    assert PCAArtifact.load(out / "pca/dinov2/fitted").meta["signature"]["backbone"] == "dinov2"
    fitted, n2 = PCAArtifact.load(out / "pca/sd-unet/fitted"), PCAArtifact.load(out / "pca/sd-unet/n2")
    assert fitted.n_components == 4 and n2.meta["leading_of"] == 4
    assert np.array_equal(n2.components.numpy(), fitted.components[:2].numpy())


@pytest.mark.slow
def test_a_rerun_trains_and_samples_nothing(swept):
    out = swept["out"]
    weights = sorted((out / "controlnets").glob("*/diffusion_pytorch_model.safetensors"))
    before = {w: w.stat().st_mtime_ns for w in weights}
    report = main(swept["argv"])
    assert report["this_run"] == {"pca_fitted": [], "trained": [], "scored": []}
    assert {w: w.stat().st_mtime_ns for w in weights} == before and len(weights) == len(COMPONENTS) + 1
    assert report["knee"] == swept["report"]["knee"]
    # other sampling settings: every point is sampled again, no ControlNet is trained again
    report = main([*swept["argv"], "--sample-steps", "1"])
    assert report["this_run"]["trained"] == [] and report["this_run"]["pca_fitted"] == []
    assert set(report["this_run"]["scored"]) == {p["name"] for p in report["points"]}
    assert {w: w.stat().st_mtime_ns for w in weights} == before


@pytest.mark.slow
def test_guidance_end_reaches_the_synthesizer(swept):
    """An end before the first step switches the ControlNet off (the images are the scale-0 ones);
    at scale 0 the end does not matter; at scale 1 and end 1 the ControlNet changes the images."""
    argv = swept["argv"]
    args = sweep.build_parser().parse_args([*argv, "--weather-refs", "0"])
    cfg = sweep.config_from_args(args)
    inst = compare.load_instruments(cfg.eval, compare.reference_size(cfg.eval))
    refs = compare.load_references(cfg.eval, inst.features)
    folder = swept["out"] / "controlnets" / "sd-unet-n4"

    def images(scale: float, end: float) -> np.ndarray:
        gen = compare.generate(cfg.eval, folder, refs, condition_scale=scale, guidance_end=end)
        return np.concatenate(gen.clear)

    off = images(0.0, 1.0)
    assert np.array_equal(images(0.0, 0.5), off)
    assert np.array_equal(images(1.0, 0.01), off)
    assert not np.array_equal(images(1.0, 1.0), off)


@pytest.mark.slow
def test_pareto_png_is_a_valid_image(swept):
    path = swept["out"] / "pareto.png"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_bad_flags_fail_before_any_work(tmp_path):
    config = REPO / "configs/train/procedural_controlnet_layout.yaml"
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--train-config", str(config)]
    with pytest.raises(ConfigError, match="backbones: variant no-such-backbone: .*not one of the allowed"):
        main([*base, "--backbones", "sd-unet", "no-such-backbone"])
    with pytest.raises(ConfigError, match="dinov2"):  # it needs its folder (a train override)
        main([*base, "--backbones", "dinov2"])
    with pytest.raises(ConfigError, match="train_overrides"):
        main([*base, "--train-overrides", "steps=3"])  # the budget is --steps, one for all
    with pytest.raises(ConfigError, match="guidance_ends"):
        main([*base, "--guidance-ends", "0"])
    with pytest.raises(ConfigError, match="controlnet"):
        main([*base, "--components"])  # no layout axis and no --controlnet
    assert not (tmp_path / "o").exists()


def test_a_second_sweep_into_one_out_must_share_the_training_budget(tmp_path):
    config = REPO / "configs/train/procedural_controlnet_layout.yaml"
    argv = ["--data", str(tmp_path), "--out", str(tmp_path), "--train-config", str(config)]
    cfg = sweep.config_from_args(sweep.build_parser().parse_args(argv))
    sweep.check_plan(cfg)
    cfg.steps = 300
    with pytest.raises(ConfigError, match="steps: 150 there, 300 now"):
        sweep.check_plan(cfg)
