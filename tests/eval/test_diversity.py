"""LPIPS-style distance: identical samples give 0, it is symmetric, toy features give the value
worked out by hand; the pairwise mean over groups; the AlexNet LPIPS loads torchvision/LPIPS files."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch

from factory.eval.diversity import (
    LPIPSAlex,
    judge_distance,
    layer_distances,
    load_lpips_alex,
    lpips_distance,
    mean_pairwise,
)
from factory.quality.segmenter import Segmenter, SegmenterConfig, TinyUNet


def test_toy_features_by_hand():
    # layer 1, 2 channels: (1, 0) against (0, 1) everywhere -> sum over channels of diff^2 = 2;
    # with channel weights (w1, w2) -> w1 + w2
    a1 = torch.zeros(1, 2, 3, 3)
    a1[:, 0] = 5.0  # the norm does not matter: (5, 0) normalises to (1, 0)
    b1 = torch.zeros(1, 2, 3, 3)
    b1[:, 1] = 0.5
    # layer 2, 1 channel: +1 against -1 on half of the pixels -> 4 on half -> mean 2
    a2 = torch.ones(1, 1, 2, 2)
    b2 = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
    d = layer_distances([a1, a2], [b1, b2])
    torch.testing.assert_close(d, torch.tensor([[2.0, 2.0]], dtype=torch.float64))
    w = layer_distances([a1, a2], [b1, b2], [torch.tensor([0.25, 3.0]), torch.tensor([0.5])])
    torch.testing.assert_close(w, torch.tensor([[3.25, 1.0]], dtype=torch.float64))


def test_identical_is_zero_and_distance_is_symmetric():
    g = torch.Generator().manual_seed(0)
    fa = [torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g)]
    fb = [torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 3, 2, 2, generator=g)]
    assert torch.equal(layer_distances(fa, fa), torch.zeros(4, 2, dtype=torch.float64))
    torch.testing.assert_close(layer_distances(fa, fb), layer_distances(fb, fa))
    assert (layer_distances(fa, fb) > 0).all() and (layer_distances(fa, fb) <= 4).all()
    with pytest.raises(ValueError, match="differ"):
        layer_distances(fa, [fb[0], fb[1][:, :2]])


def test_mean_pairwise_over_groups():
    def dist(a, b):  # a known distance: difference of mean grey values
        return np.abs(a.mean(axis=(1, 2, 3)) - b.mean(axis=(1, 2, 3)))

    g1 = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 10, 40)])  # pairs: 10, 40, 30 -> 80/3
    g2 = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (5, 5)])  # identical -> 0
    single = g1[:1]  # one sample: no pair, skipped
    assert mean_pairwise([g1, g2, single], dist) == pytest.approx((80 / 3 + 0) / 2)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        mean_pairwise([single], dist)


def test_judge_distance():
    torch.manual_seed(0)
    seg = Segmenter(TinyUNet(4), SegmenterConfig(width_mult=4))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 2, 32, 64, 3), dtype=np.uint8)
    dist = judge_distance(seg)
    np.testing.assert_allclose(dist(a, a), 0.0, atol=1e-12)
    np.testing.assert_allclose(dist(a, b), dist(b, a))
    assert ((dist(a, b) > 0) & (dist(a, b) <= 4)).all()


def test_lpips_alex_from_torchvision_and_lpips_files(tmp_path):
    torch.manual_seed(0)
    net = LPIPSAlex()
    # a torchvision AlexNet state dict: features.* plus a classifier the loader ignores
    state = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)
    torch.save(state, tmp_path / "alexnet.pth")
    lin = {f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), 2.0) for i, c in enumerate(LPIPSAlex.CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    plain = load_lpips_alex(tmp_path / "alexnet.pth")
    weighted = load_lpips_alex(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    i, j = map(list, zip(*combinations(range(3), 2)))
    d_plain = lpips_distance(plain)(images[i], images[j])
    d_weighted = lpips_distance(weighted)(images[i], images[j])
    assert d_plain.shape == (3,) and (d_plain > 0).all()
    np.testing.assert_allclose(d_weighted, 2 * d_plain, rtol=1e-5)  # weights of 2 on every channel
    np.testing.assert_allclose(lpips_distance(plain)(images, images), 0.0, atol=1e-6)
    np.testing.assert_allclose(lpips_distance(plain)(images[j], images[i]), d_plain, rtol=1e-6)
    assert mean_pairwise([images], lpips_distance(plain)) == pytest.approx(float(d_plain.mean()), rel=1e-6)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an AlexNet state dict"):
        load_lpips_alex(tmp_path / "bad.pth")
