"""Diversity: how different are samples of one layout? (Table 2, LPIPS)

Why: a condition that pins every pixel would score perfectly on alignment and yet give one image
per reference; the factory wants many variants per layout. The paper measures the mean LPIPS
distance between samples generated from the same condition with different seeds (higher = more
diverse).

LPIPS (Zhang et al. 2018, eq. 1) compares deep features of two images x, y: for each layer l,
the channel vectors are unit-normalised (f / ||f||_2 over channels), their difference is weighted
per channel (w_l, learnt; 1 when not given), squared, summed over channels and averaged over
space; the layers are summed:

    d(x, y) = sum_l (1 / (H_l W_l)) sum_{h,w} || w_l * (f^l_hw(x) - f^l_hw(y)) ||^2.

- ``layer_distances``: that per-layer term for a batch of pairs; ``mean_pairwise``: the mean
  over all unordered pairs of samples within each group (a group = the samples of one layout),
  averaged over groups.
- real: ``LPIPSAlex``, AlexNet's five ReLU outputs with the LPIPS input scaling and learnt
  weights; backbone weights (a torchvision AlexNet state dict, ``features.*``) and linear weights
  (the LPIPS release's ``alex.pth``, ``lin{0..4}.model.1.weight``) are loaded by path; without
  linear weights it is LPIPS' unweighted baseline.
- offline: the judge segmenter's four encoder stages, unweighted, and the layers *averaged*
  (not summed) so that the value lies in [0, 4] whatever the depth; printed ``LPIPS(judge)``,
  comparable only with itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from torch import nn


def unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, C, H, W) -> each pixel's channel vector divided by its L2 norm."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def layer_distances(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, L): per layer, the spatial mean of the (weighted) squared difference of unit-normalised
    features, summed over channels. ``weights``: per layer, (C,) non-negative channel weights."""
    if len(feats_a) != len(feats_b) or not feats_a:
        raise ValueError(f"{len(feats_a)} and {len(feats_b)} layers: need the same, non-zero number")
    out = []
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        if fa.shape != fb.shape:
            raise ValueError(f"layer {i}: features {tuple(fa.shape)} and {tuple(fb.shape)} differ")
        diff = (unit_normalise(fa.double()) - unit_normalise(fb.double())) ** 2
        if weights is not None:
            diff = diff * weights[i].double().view(1, -1, 1, 1)
        out.append(diff.sum(dim=1).mean(dim=(1, 2)))
    return torch.stack(out, dim=1)


def mean_pairwise(
    groups: Sequence[np.ndarray], distance: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> float:
    """Mean distance over all unordered pairs within each group, then over groups.

    ``groups``: per layout, its samples (K >= 2, H, W, 3) uint8; ``distance(a, b)``: (P,) distances
    between the images of two stacks (P, H, W, 3). Groups with fewer than two samples are skipped.
    """
    per_group = []
    for g in groups:
        if len(g) < 2:
            continue
        i, j = map(list, zip(*combinations(range(len(g)), 2)))
        per_group.append(float(np.mean(distance(g[i], g[j]))))
    if not per_group:
        raise ValueError("no group has two samples: diversity needs at least 2 seeds per layout")
    return float(np.mean(per_group))


# --------------------------------------------------------------------------------- offline path


def judge_distance(segmenter) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """LPIPS(judge): unweighted, the judge's encoder stages averaged (values in [0, 4])."""

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return layer_distances(segmenter.features(a), segmenter.features(b)).mean(dim=1).numpy()

    return distance


# ------------------------------------------------------------------------------------ real path

# The LPIPS input scaling: images in [-1, 1] are shifted and scaled per channel before AlexNet.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSAlex(nn.Module):
    """LPIPS with AlexNet: torchvision's ``features`` layout (convs at 0, 3, 6, 8, 10), taps after
    each ReLU (64, 192, 384, 256, 256 channels), per-channel linear weights, layers summed."""

    CHANNELS = (64, 192, 384, 256, 256)
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.taps = (1, 4, 7, 9, 11)
        self.lin = nn.ParameterList([nn.Parameter(torch.ones(c), requires_grad=False) for c in self.CHANNELS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """float images (B, 3, H, W) in [0, 1] -> the five ReLU outputs."""
        x = (2.0 * images - 1.0 - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) LPIPS distances between float images a and b (B, 3, H, W) in [0, 1]."""
        return layer_distances(self.layers(a), self.layers(b), list(self.lin)).sum(dim=1).float()


def load_lpips_alex(backbone: str | Path, linear: str | Path | None = None) -> LPIPSAlex:
    """``LPIPSAlex`` with AlexNet weights from ``backbone`` (torchvision state dict: ``features.N.*``;
    its classifier is ignored) and LPIPS' linear weights from ``linear`` (``lin{i}.model.1.weight``,
    shape (1, C, 1, 1)); without ``linear``, every channel weighs 1."""
    model = LPIPSAlex()
    state = torch.load(Path(backbone), map_location="cpu", weights_only=True)
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    missing = sorted(set(model.features.state_dict()) - set(feats))
    if missing:
        raise ValueError(f"{backbone}: not an AlexNet state dict (missing features.{missing[0]}, ...)")
    model.features.load_state_dict(feats)
    if linear is not None:
        lin = torch.load(Path(linear), map_location="cpu", weights_only=True)
        for i, c in enumerate(LPIPSAlex.CHANNELS):
            w = lin.get(f"lin{i}.model.1.weight")
            if w is None or w.numel() != c:
                raise ValueError(f"{linear}: no LPIPS linear weights lin{i}.model.1.weight of {c} channels")
            model.lin[i].data.copy_(w.reshape(c))
    return model.eval()


def lpips_distance(model: LPIPSAlex) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A ``mean_pairwise`` distance over uint8 image stacks with the real LPIPS network."""

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0
        tb = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).float() / 255.0
        return model(ta, tb).numpy()

    return distance


__all__ = [
    "LPIPSAlex",
    "judge_distance",
    "layer_distances",
    "load_lpips_alex",
    "lpips_distance",
    "mean_pairwise",
    "unit_normalise",
]
