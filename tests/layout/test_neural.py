"""NeuralLayout end to end on the tiny model: fit, store, upsample, visualise, refuse bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.config import ConfigError, from_dict
from factory.data.sample import DataError
from factory.layout import (
    LayoutConfig,
    LayoutError,
    NeuralLayout,
    PCAArtifact,
    SDUNetBackbone,
    batch_vectors,
    fit_layout_pca,
    fit_pca,
    layout_to_rgb,
    read_image,
    sample_counts,
)

CFG = LayoutConfig(model="tiny", n_components=8, pca_samples=600, micro_batch=2, batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def backbone(tiny_components):
    return SDUNetBackbone(tiny_components, CFG.layers, micro_batch=CFG.micro_batch)


@pytest.fixture(scope="module")
def pca(backbone, scenes):
    return fit_layout_pca(backbone, scenes, CFG)


def test_fit_records_everything_needed_to_reproduce(pca, backbone):
    assert pca.n_components == 8 and pca.channels == backbone.channels == 160
    assert pca.meta["sample_count"] == 600 and pca.meta["images"] == 5
    sig = pca.meta["signature"]
    assert sig["timestep"] == 100 and sig["noise_seed"] == 42 and sig["layers"] == [2, 5, 8]
    assert sig["content_hash"] == backbone.components.content_hash and sig["prompt"] == ""


def test_sampled_vectors_do_not_depend_on_batching(backbone, scenes):
    counts = sample_counts([s.key for s in scenes], 600, seed=0)
    together = batch_vectors(backbone, scenes, counts, 0)
    apart = {}
    for s in reversed(scenes):
        apart.update(batch_vectors(backbone, [s], counts, 0))
    assert together.keys() == apart.keys()
    for k in together:
        assert torch.equal(together[k], apart[k])
    assert fit_pca(together, 8).components.numpy().tobytes() == fit_pca(apart, 8).components.numpy().tobytes()


def test_layouts_identical_across_batch_compositions(backbone, pca, scenes):
    layout = NeuralLayout(backbone, pca)
    all_at_once = layout.compute_stored(scenes)
    assert all_at_once.dtype == torch.float16 and all_at_once.shape == (5, 8, 16, 32)
    pairs = torch.cat([layout.compute_stored(scenes[i : i + 2]) for i in range(0, 5, 2)])
    single = layout.compute_stored([scenes[3]])
    assert torch.equal(all_at_once, pairs)
    assert torch.equal(single[0], all_at_once[3])


def test_layout_channels_are_roughly_unit_variance(backbone, pca, scenes):
    layout = NeuralLayout(backbone, pca).compute(scenes)
    std = layout.transpose(0, 1).reshape(8, -1).std(dim=1)
    assert torch.all(std > 0.5) and torch.all(std < 1.5)


def test_pixel_resolution_conditioning(backbone, pca, scenes):
    layout = NeuralLayout(backbone, pca)
    full = layout(scenes[:2])
    assert full.shape == (2, 8, 64, 128) and full.dtype == torch.float32
    stored = layout.compute_stored(scenes[:2])
    up = NeuralLayout.upsample_stored(stored, (64, 128))
    torch.testing.assert_close(up, full, atol=2e-2, rtol=1e-2)  # float16 storage
    assert (full < 0).any()  # signed channels survive


def test_configured_resolution_resizes_images(backbone, pca, scenes):
    layout = NeuralLayout(backbone, pca, resolution=(32, 64))
    assert layout.compute_stored(scenes[:1]).shape == (1, 8, 8, 16)
    assert layout(scenes[:1]).shape == (1, 8, 32, 64)


def test_pca_from_another_backbone_is_refused(tiny_components, pca):
    other = SDUNetBackbone(tiny_components, (2, 5), micro_batch=2)
    with pytest.raises(LayoutError, match=r"layers: fitted \[2, 5, 8\], now \[2, 5\]"):
        NeuralLayout(other, pca)
    other_t = SDUNetBackbone(tiny_components, timestep=200)
    with pytest.raises(LayoutError, match="timestep: fitted 100, now 200"):
        NeuralLayout(other_t, pca)


def test_from_config_loads_the_artifact(tmp_path, tiny_components, pca):
    pca.save(tmp_path / "pca")
    cfg = from_dict(LayoutConfig, {"n_components": 8, "pca": str(tmp_path / "pca"), "device": "cpu"})
    layout = NeuralLayout.from_config(cfg, tiny_components)
    assert torch.equal(layout.pca.components, pca.components)
    missing = from_dict(LayoutConfig, {"pca": str(tmp_path / "nope"), "device": "cpu"})
    with pytest.raises(LayoutError, match="PCA file missing"):
        NeuralLayout.from_config(missing, tiny_components)


def test_layout_config_validation():
    with pytest.raises(ConfigError, match="layers"):
        from_dict(LayoutConfig, {"layers": [5, 2]})
    with pytest.raises(ConfigError, match="dinov2"):
        from_dict(LayoutConfig, {"backbone": "dinov2"})
    with pytest.raises(ConfigError, match="backbone"):
        from_dict(LayoutConfig, {"backbone": "resnet"})


def test_layout_to_rgb(backbone, pca, scenes):
    rgb = layout_to_rgb(NeuralLayout(backbone, pca).compute(scenes[:2]))
    assert rgb.shape == (2, 16, 32, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255


def test_bad_images_are_clear_errors(tmp_path, backbone, pca):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match="broken.png: cannot be decoded"):
        read_image(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(DataError, match="8-bit RGB"):
        NeuralLayout(backbone, pca).compute([np.zeros((64, 128), np.float32)])


def test_saved_artifact_reloads_to_the_same_layouts(tmp_path, backbone, pca, scenes):
    pca.save(tmp_path / "p")
    a = NeuralLayout(backbone, pca).compute_stored(scenes[:1])
    b = NeuralLayout(backbone, PCAArtifact.load(tmp_path / "p")).compute_stored(scenes[:1])
    assert torch.equal(a, b)
