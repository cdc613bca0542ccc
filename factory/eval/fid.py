"""Realism: the Fréchet distance between generated and real images' features (Table 2, FID).

Why: alignment and depth say the image shows the right scene, not that it looks like a real
one. FID (Heusel et al. 2017) fits a Gaussian to each set's features and measures

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),

the Fréchet (2-Wasserstein) distance between the two Gaussians; lower is better.

Feature spaces:

- real: the standard FID network, Inception-V3 as converted from TensorFlow's 2015-12-05 graph
  (``pt_inception-2015-12-05-*.pth``, the weights pytorch-fid and torchmetrics download), built
  here in plain torch (no torchvision) with that file's parameter names and loaded by path:
  2048-d pool features of images resized to 299x299 and scaled to [-1, 1]. Only this network
  with those weights gives numbers comparable with published FIDs.
- offline: the judge segmenter's deepest encoder stage, averaged over space. That is **not**
  FID and is printed as ``FD(judge)``: a Fréchet distance in the feature space of a small
  network trained on procedural scenes, comparable only with other FD(judge) numbers.

Both are biased upwards at small sample counts (the paper's FID uses thousands of images): the
comparison reports the FD of real val images against the real reference set, the value a
perfect generator would get at the same count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------ the distance


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64 (N >= 2)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with ``scipy.linalg.sqrtm``.

    S1 S2 is similar to a positive semi-definite matrix, so its square root is real in exact
    arithmetic; sqrtm returns tiny imaginary parts from rounding, dropped here. Should it return
    non-finite values (near-singular covariances), both diagonals get 1e-6 added, the usual
    regularisation; ``frechet_distance_of`` avoids the singular case altogether.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(mu1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance_of(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets (N_a, D), (N_b, D).

    With fewer samples than dimensions (the usual case in a small comparison: 16 images, 2048
    Inception features) both covariances are singular, where ``sqrtm`` is slow (30 s at D = 2048
    on one core) and inaccurate. The trace term is then computed exactly from the samples: with
    centred, 1/sqrt(N-1)-scaled data matrices A, B (S_a = A^T A, S_b = B^T B), the non-zero
    eigenvalues of S_a S_b are those of (A B^T)(A B^T)^T, so Tr (S_a S_b)^(1/2) is the sum of the
    singular values of the small N_a x N_b matrix A B^T.
    """
    fa = np.asarray(features_a, np.float64)
    fb = np.asarray(features_b, np.float64)
    mu_a, s_a = feature_stats(fa)
    mu_b, s_b = feature_stats(fb)
    if min(len(fa), len(fb)) > fa.shape[1]:
        return frechet_distance(mu_a, s_a, mu_b, s_b)
    a = (fa - mu_a) / np.sqrt(len(fa) - 1)
    b = (fb - mu_b) / np.sqrt(len(fb) - 1)
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


# ------------------------------------------------------------------------ offline feature space


def judge_features(segmenter, images: np.ndarray) -> np.ndarray:
    """(N, C) features of uint8 images: the judge segmenter's deepest encoder stage, spatial mean."""
    return segmenter.features(images)[-1].mean(dim=(2, 3)).numpy().astype(np.float64)


# ------------------------------------------------------------ real feature space: Inception-V3


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as TensorFlow's), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pooling divides by the number of real (unpadded) inputs
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (``pool`` channels)."""

    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``c7`` inner channels)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):  # fmt: skip
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs. The graph's last block (``max_pool``) pools its
    fourth branch by max instead of average - a quirk of the 2015 TensorFlow graph that FID keeps."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """Inception-V3 up to its 2048-d average pool, with the FID weights' parameter names."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool=32)
        self.Mixed_5c = InceptionA(256, pool=64)
        self.Mixed_5d = InceptionA(288, pool=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float images (B, 3, H, W) in [0, 1] -> (B, 2048) pool features."""
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
            x = block(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(path: str | Path) -> InceptionV3FID:
    """The FID Inception-V3 with weights from ``path`` (a torch state dict, e.g.
    ``pt_inception-2015-12-05-6726825d.pth``; its 1008-way classifier ``fc.*`` is not used).

    Every parameter and batch-norm statistic of the network must be in the file: a missing one
    would silently stay random and the numbers would mean nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: FID Inception weights missing (fix: pt_inception-2015-12-05-6726825d.pth)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = InceptionV3FID()
    wanted = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(
            f"{path}: not the FID Inception-V3 weights ({len(missing)} tensors missing, e.g. {missing[:3]}); "
            "fix: the pt_inception-2015-12-05 file"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return model.eval()


@torch.no_grad()
def inception_features(model: InceptionV3FID, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, 2048) float64 FID features of uint8 RGB images (N, H, W, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = (
            torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).float()
            / 255.0
        )
        out.append(model(x))
    return torch.cat(out).numpy().astype(np.float64)


__all__ = [
    "InceptionV3FID",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_of",
    "inception_features",
    "judge_features",
    "load_fid_inception",
]
