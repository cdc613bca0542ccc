"""Every condition kind: same interface, float32 (B, C, H, W) at pixel resolution, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

from factory.conditions import (
    CannyCondition,
    ConditionConfig,
    ConditionError,
    ConditionProvider,
    HEDNet,
    SemsegCondition,
    build_condition,
)
from factory.conditions.providers import PROVIDERS, ConditionKind
from factory.config import ConfigError, from_dict
from factory.data.procedural import render_scene
from factory.data.sample import DataError, Sample
from factory.layout import LayoutConfig, SDUNetBackbone, fit_layout_pca
from factory.models import load_components


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(3):
        scene = render_scene(rng, 64, 128)
        out.append(Sample(key=f"c_{i:06d}_000019", image=scene.image, semantic=scene.labelids))
    return out


def check_contract(provider: ConditionProvider, samples, size=(64, 128)) -> torch.Tensor:
    assert isinstance(provider, ConditionProvider)
    out = provider(samples)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.shape == (len(samples), provider.channels, *size)
    assert torch.isfinite(out).all()
    assert isinstance(provider.signature(), dict) and provider.signature()["kind"] == provider.kind
    assert isinstance(provider.needs_labels, bool)
    if not provider.needs_labels:  # a label-free provider gives the same without any labels
        unlabelled = [Sample(key=s.key, image=s.image) for s in samples]
        torch.testing.assert_close(provider(unlabelled), out, rtol=0, atol=0)
    return out


def test_needs_labels_is_declared_per_kind():
    """Only the GT-semseg baseline reads labels; depth is estimated from the image alone."""
    assert {kind: cls.needs_labels for kind, cls in PROVIDERS.items()} == {
        "layout": False,
        "canny": False,
        "semseg": True,
        "depth": False,
        "disparity": True,
        "hed": False,
    }
    assert set(PROVIDERS) == set(get_args(ConditionKind))
    assert ConditionConfig(kind="semseg").needs_labels
    assert not ConditionConfig(kind="canny").needs_labels
    assert not ConditionConfig(kind="depth", depth_model=Path("d")).needs_labels
    assert SemsegCondition().needs_labels and not CannyCondition().needs_labels


def test_canny_edges_and_thresholds(samples):
    low = check_contract(build_condition(ConditionConfig(kind="canny", canny_low=20, canny_high=60)), samples)
    high = check_contract(CannyCondition(200, 400), samples)
    assert set(low.unique().tolist()) <= {0.0, 1.0}
    assert low.sum() > high.sum() > 0  # lower thresholds keep more edges
    assert torch.equal(low[:, 0], low[:, 2])


def test_semseg_colours_are_cityscapes_colours(samples):
    out = check_contract(build_condition(ConditionConfig(kind="semseg")), samples)
    road = samples[0].semantic == 7  # labelId 7 = road, colour (128, 64, 128)
    assert road.any()
    pix = out[0][:, torch.from_numpy(road)].T
    torch.testing.assert_close(pix[0], torch.tensor([128, 64, 128]) / 255.0)
    small = SemsegCondition(resolution=(32, 64))(samples)
    assert small.shape == (3, 3, 32, 64)
    with pytest.raises(DataError, match="no semantic labels"):
        SemsegCondition()([Sample(key="x", image=samples[0].image)])


def test_disparity_is_the_references_inverse_depth_normalised(samples):
    """The disparity baseline: (p - 1) / 256 min-max per image, so near is bright and nearer pixels
    are brighter in exactly the order of the true depth; invalid disparity (sky) is 0."""
    rng = np.random.default_rng(5)
    scenes = [render_scene(rng, 64, 128) for _ in range(2)]
    with_disp = [
        Sample(key=f"d_{i:06d}_000019", image=sc.image, disparity=sc.disparity) for i, sc in enumerate(scenes)
    ]
    out = check_contract(build_condition(ConditionConfig(kind="disparity")), with_disp)
    for d, sc in zip(out, scenes):
        assert torch.equal(d[0], d[2]) and d.max() == pytest.approx(1.0)
        valid = sc.disparity > 1
        full = np.where(valid, (sc.disparity.astype(np.float64) - 1) / 256, 0.0)  # invalid = 0 = far
        expected = (full - full.min()) / (full.max() - full.min())
        np.testing.assert_allclose(d[0].numpy(), expected, rtol=1e-5, atol=1e-6)
        if not valid.all():
            assert (d[0][torch.from_numpy(~valid)] == 0).all()
        near = np.unravel_index(sc.depth.argmin(), sc.depth.shape)
        assert d[0][near] > 0.99  # the nearest point is the brightest
    assert build_condition(ConditionConfig(kind="disparity")).needs_labels
    with pytest.raises(DataError, match="no disparity label"):
        build_condition(ConditionConfig(kind="disparity"))(samples[:1])


def test_hed_from_a_weights_file(tmp_path, samples):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = HEDNet()
    path = tmp_path / "hed.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    provider = build_condition(ConditionConfig(kind="hed", hed_weights=path, device="cpu"))
    out = check_contract(provider, samples)
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    torch.save(net.state_dict(), tmp_path / "hed.pth")
    again = build_condition(ConditionConfig(kind="hed", hed_weights=tmp_path / "hed.pth", device="cpu"))
    torch.testing.assert_close(again(samples), out)
    with pytest.raises(ConditionError, match="HED weights file missing"):
        build_condition(ConditionConfig(kind="hed", hed_weights=tmp_path / "absent.pth"))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConditionError, match="not a HED state dict"):
        build_condition(ConditionConfig(kind="hed", hed_weights=tmp_path / "other.pth"))


def test_depth_from_a_local_transformers_model(tmp_path, samples):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=8,
        image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        patch_size=8,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(tmp_path / "depth")
    provider = build_condition(ConditionConfig(kind="depth", depth_model=tmp_path / "depth", device="cpu"))
    out = check_contract(provider, samples)
    for d in out:
        assert d.min() == 0 and d.max() == pytest.approx(1.0)
    with pytest.raises(ConditionError, match="no depth model here"):
        build_condition(ConditionConfig(kind="depth", depth_model=tmp_path / "nothing"))


def test_layout_condition_matches_neural_layout(tmp_path, samples):
    comps = load_components("tiny")
    cfg = LayoutConfig(n_components=6, pca_samples=300, micro_batch=1, device="cpu")
    pca = fit_layout_pca(SDUNetBackbone(comps, micro_batch=1), samples, cfg)
    pca.save(tmp_path / "pca")
    cond_cfg = from_dict(
        ConditionConfig,
        {
            "kind": "layout",
            "device": "cpu",
            "layout": {"n_components": 6, "micro_batch": 1, "device": "cpu", "pca": str(tmp_path / "pca")},
        },
    )
    provider = build_condition(cond_cfg, comps)
    out = check_contract(provider, samples[:2])
    assert provider.channels == 6 and (out < 0).any()
    assert provider.signature()["n_components"] == 6


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="depth_model"):
        from_dict(ConditionConfig, {"kind": "depth"})
    with pytest.raises(ConfigError, match="hed_weights"):
        from_dict(ConditionConfig, {"kind": "hed"})
    with pytest.raises(ConfigError, match="layout.pca"):
        from_dict(ConditionConfig, {"kind": "layout"})
    with pytest.raises(ConfigError, match="canny_low"):
        from_dict(ConditionConfig, {"kind": "canny", "canny_low": 300, "canny_high": 100})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(ConditionConfig, {"kind": "sketch"})
