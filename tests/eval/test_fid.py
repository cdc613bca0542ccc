"""The Fréchet distance against closed forms and an independent eigen-decomposition; the FID
Inception-V3 built without torchvision has the published parameter count and loads by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.eval.fid import (
    InceptionV3FID,
    feature_stats,
    frechet_distance,
    frechet_distance_of,
    inception_features,
    judge_features,
    load_fid_inception,
)


def random_spd(rng, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


def test_equal_covariances_give_the_squared_mean_distance():
    rng = np.random.default_rng(0)
    s = random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)


def test_diagonal_covariances_closed_form():
    # For commuting covariances the trace term is sum (sqrt a_i - sqrt b_i)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)


def test_random_data_against_an_independent_eigendecomposition():
    """Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)) (similar matrices, the second symmetric):
    computed with numpy's eigh, independent of scipy's sqrtm."""
    rng = np.random.default_rng(1)
    fa = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    fb = rng.normal(loc=0.5, size=(150, 8)) @ rng.normal(size=(8, 8))
    mu1, s1 = fa.mean(0), np.cov(fa, rowvar=False)
    mu2, s2 = fb.mean(0), np.cov(fb, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w)) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance_of(fa, fb) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_of(fb, fa) == pytest.approx(expected, rel=1e-8)  # symmetric
    assert frechet_distance_of(fa, fa) == pytest.approx(0.0, abs=1e-6)


def test_fewer_samples_than_dimensions_agrees_with_sqrtm_of_the_statistics():
    """The sample route (singular values of A B^T) against scipy's sqrtm on the covariances."""
    rng = np.random.default_rng(2)
    for n_a, n_b, d in ((5, 6, 20), (12, 30, 16), (40, 9, 40)):
        fa, fb = rng.normal(size=(n_a, d)), rng.normal(size=(n_b, d)) * 2 + 1.0
        via_sqrtm = frechet_distance(*feature_stats(fa), *feature_stats(fb))
        assert frechet_distance_of(fa, fb) == pytest.approx(via_sqrtm, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(fa[:1])
    assert frechet_distance_of(fa, fa) == pytest.approx(0.0, abs=1e-9)


def test_fid_inception_architecture_and_weights_by_path(tmp_path):
    model = InceptionV3FID()
    # torchvision's inception_v3 has 27,161,264 parameters; minus its classifier (2,049,000) and
    # auxiliary head (3,326,696) that is the 21,785,568 of the FID feature network
    assert sum(p.numel() for p in model.parameters()) == 21_785_568
    torch.manual_seed(0)
    # random weights (a fresh init, other batch-norm statistics), saved without num_batches_tracked
    state = {k: v.clone() for k, v in InceptionV3FID().state_dict().items() if "num_batches_tracked" not in k}
    state = {k: v + 0.01 * torch.rand_like(v) if "running" in k else v for k, v in state.items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # the file's classifier
    torch.save(state, tmp_path / "pt_inception.pth")
    loaded = load_fid_inception(tmp_path / "pt_inception.pth")
    torch.testing.assert_close(
        loaded.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"]
    )
    images = np.random.default_rng(3).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    feats = inception_features(loaded, images, batch_size=2)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all() and (feats >= 0).all()  # after a ReLU
    del state["Mixed_5b.branch1x1.bn.running_mean"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="1 tensors missing"):
        load_fid_inception(tmp_path / "partial.pth")


def test_judge_features_are_the_deepest_stage_pooled():
    from factory.quality.segmenter import Segmenter, SegmenterConfig, TinyUNet

    torch.manual_seed(0)
    seg = Segmenter(TinyUNet(4), SegmenterConfig(width_mult=4))
    images = np.random.default_rng(4).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    feats = judge_features(seg, images)
    assert feats.shape == (3, 16)
    np.testing.assert_allclose(feats[1], seg.features(images[1:2])[-1].mean(dim=(2, 3))[0].numpy(), rtol=1e-5)
