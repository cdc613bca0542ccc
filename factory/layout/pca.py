"""Exact streaming PCA of feature vectors, the reproducible vector sampler, and the PCA artifact.

Fitting (NEURAL_LAYOUT.md): accumulate the sum and the sum of outer products in float64, form the
covariance, ``eigh``, keep the top N, fix each component's sign so its largest-magnitude loading
is positive. Mean-centring only; applying divides each component by sqrt(eigenvalue), so the
ControlNet sees unit-variance channels - so every kept eigenvalue must be > 0: a fit whose
sample spans fewer dimensions than requested is refused, and so is an artifact file with a
zero, negative or non-finite value, an integer dtype or tensors whose lengths disagree with each
other or with the sidecar (``artifact_problems``, checked by ``PCAArtifact.load``).

Reproducibility: which vectors are drawn depends only on (seed, sample key, grid size), never on
batch composition or worker count (``sample_counts`` / ``sample_positions``), and ``fit_pca``
accumulates per-key vectors in sorted key order, so the same training set gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from factory.atomic import atomic_write_bytes, atomic_write_text
from factory.layout.backbones import LayoutError

FORMAT_VERSION = 1
# Signature fields that must match between the backbone a PCA was fitted on and the one applying it
# (and between a layout store and its reader, factory.layout.store). ``model_ref`` is
# informational (a folder may move, a relative path become absolute); the content hash identifies
# the weights.
INFORMATIONAL_FIELDS = frozenset({"model_ref"})


def stable_hash(*parts: Any) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike Python's ``hash``).

    Deliberately not ``factory.synth.seeds.sample_seed``: that one length-prefixes its fields and
    keeps the top 63 big-endian bits, this one joins ``str(part)`` with '\\x1f' and reads 64
    little-endian bits. Either formula is pinned by what it already produced (which vectors every
    fitted PCA drew; every generated dataset's seeds), so neither can become the other.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_counts(keys: list[str] | tuple[str, ...], total: int, seed: int) -> dict[str, int]:
    """How many vectors to draw from each image so that ``total`` are drawn over ``keys``.

    Every image gets ``total // n``; the ``total % n`` extra vectors go to the images first in a
    seeded hash order (not alphabetical, so no city is favoured). Depends only on the key set.
    """
    keys = sorted(set(keys))
    if not keys:
        raise LayoutError("PCA sampling needs at least one training image, got none")
    if total < 1:
        raise LayoutError(f"PCA sample count must be >= 1, got {total}")
    base, extra = divmod(total, len(keys))
    favoured = set(sorted(keys, key=lambda k: stable_hash(seed, "extra", k))[:extra])
    return {k: base + (1 if k in favoured else 0) for k in keys}


def sample_positions(key: str, count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Sorted flat indices into an (height x width) feature grid, drawn without replacement.

    Seeded by (seed, key): the same image gives the same positions in any batch on any worker.
    If ``count`` exceeds the grid, the whole grid is used.
    """
    n = height * width
    if count >= n:
        return torch.arange(n)
    rng = np.random.default_rng(stable_hash(seed, "positions", key))
    return torch.from_numpy(np.sort(rng.choice(n, size=count, replace=False)))


def draw_vectors(
    features: torch.Tensor, keys: list[str], counts: Mapping[str, int], seed: int
) -> dict[str, torch.Tensor]:
    """Per-key sampled feature vectors (n_k, C) float32 on CPU from a (B, C, h, w) feature batch."""
    if features.shape[0] != len(keys):
        raise LayoutError(f"{features.shape[0]} feature maps but {len(keys)} keys")
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    out = {}
    for i, key in enumerate(keys):
        idx = sample_positions(key, counts.get(key, 0), h, w, seed).to(flat.device)
        out[key] = flat[i][:, idx].T.float().cpu().contiguous()
    return out


class StreamingPCA:
    """Running float64 sum and sum of outer products of C-dimensional vectors.

    ``add`` in a fixed order gives bit-identical results; ``fit_pca`` fixes that order.
    """

    def __init__(self, channels: int, device: str | torch.device = "cpu"):
        self.channels = channels
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def add(self, vectors: torch.Tensor) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.channels:
            raise LayoutError(f"PCA expects (n, {self.channels}) vectors, got {tuple(vectors.shape)}")
        x = vectors.to(device=self.sum.device, dtype=torch.float64)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def fit(self, n_components: int, meta: dict[str, Any] | None = None) -> PCAArtifact:
        if self.count < 2:
            raise LayoutError(f"PCA needs at least 2 vectors, got {self.count}")
        if not 1 <= n_components <= self.channels:
            raise LayoutError(f"PCA n_components must be in 1..{self.channels}, got {n_components}")
        n = self.count
        mean = self.sum / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        cov = (cov + cov.T) / 2  # exact symmetry for eigh
        evals, evecs = torch.linalg.eigh(cov.cpu())
        order = torch.arange(len(evals) - 1, len(evals) - 1 - n_components, -1)
        evals = evals[order]
        # A component without variance (zero up to rounding, relative to the largest) would be
        # divided by sqrt(~0) in apply: refuse it here, as load refuses a zero eigenvalue.
        has_variance = evals > max(float(evals[0]), 0.0) * 1e-12
        if not has_variance.all():
            raise LayoutError(
                f"only {int(has_variance.sum())} of the {n_components} requested PCA components have "
                f"variance (the {n} sampled vectors span fewer dimensions); fix: sample more "
                "vectors (layout.pca_samples) or lower layout.n_components"
            )
        comps = evecs[:, order].T.contiguous()  # (N, C)
        # sign rule: the largest-magnitude loading of each component is positive
        pivot = comps.abs().argmax(dim=1)
        signs = torch.sign(comps[torch.arange(n_components), pivot])
        comps = comps * signs[:, None]
        info = dict(meta or {})
        info["sample_count"] = n
        return PCAArtifact(mean=mean.cpu(), components=comps, eigenvalues=evals, meta=info)


def fit_pca(
    vectors: Mapping[str, torch.Tensor], n_components: int, meta: dict[str, Any] | None = None
) -> PCAArtifact:
    """Fit on per-key sampled vectors, added in sorted key order (independent of how they were made)."""
    keys = sorted(vectors)
    if not keys:
        raise LayoutError("fit_pca got no vectors")
    pca = StreamingPCA(vectors[keys[0]].shape[1])
    for key in keys:
        if vectors[key].numel():
            pca.add(vectors[key])
    info = dict(meta or {})
    info.setdefault("images", len(keys))
    # The fitted keys are recorded so a benchmark can prove no test image (ACDC) shaped the PCA.
    info.setdefault("fit_keys", keys)
    return pca.fit(n_components, info)


def artifact_problems(
    mean: torch.Tensor,
    components: torch.Tensor,
    eigenvalues: torch.Tensor,
    sidecar: Mapping[str, Any] | None = None,
) -> list[str]:
    """What is wrong with a PCA's tensors (empty list: nothing), for ``PCAArtifact.load``.

    A usable PCA has floating-point tensors, mean (C,), components (N, C) and eigenvalues (N,)
    with N, C >= 1, as many components as the sidecar records (``n_components``, ``channels``,
    ``eigenvalues``), only finite values, and every eigenvalue (explained variance) > 0 -
    ``apply`` divides by its square root.
    """
    tensors = {"mean": mean, "components": components, "eigenvalues": eigenvalues}
    wrong_dtype = [
        f"{k} has dtype {t.dtype}, not floating point"
        for k, t in tensors.items()
        if not t.is_floating_point()
    ]
    if wrong_dtype:
        return wrong_dtype
    dims = {"mean": 1, "components": 2, "eigenvalues": 1}
    wrong_rank = [
        f"{k} has shape {tuple(t.shape)}, expected {dims[k]} dimension(s)"
        for k, t in tensors.items()
        if t.ndim != dims[k]
    ]
    if wrong_rank:
        return wrong_rank
    problems = []
    n, c = components.shape
    if n < 1 or c < 1:
        problems.append(f"components has shape {tuple(components.shape)}: no components or channels")
    if mean.shape[0] != c:
        problems.append(f"mean has {mean.shape[0]} channels but components have {c}")
    if eigenvalues.shape[0] != n:
        problems.append(f"{eigenvalues.shape[0]} eigenvalues for {n} components")
    side = sidecar or {}
    recorded = {"n_components": n, "channels": c}
    if "eigenvalues" in side:
        recorded["eigenvalues"] = n
    for key, actual in recorded.items():
        if key in side:
            value = side[key]
            count = len(value) if key == "eigenvalues" and isinstance(value, list) else value
            if count != actual:
                problems.append(f"the sidecar records {key} {count!r} but the tensors hold {actual}")
    for k, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            problems.append(f"{k} holds {bad} NaN/inf value(s)")
    finite = eigenvalues[torch.isfinite(eigenvalues)]
    if (finite <= 0).any():
        idx = [i for i, v in enumerate(eigenvalues.tolist()) if v <= 0]
        problems.append(
            f"eigenvalue(s) {idx[:5]} are {[eigenvalues[i].item() for i in idx[:5]]}: explained "
            "variance must be > 0 (each channel is divided by its square root)"
        )
    return problems


# The artifact's two files: ``<name>.safetensors`` (mean, components, eigenvalues) and
# ``<name>.json`` (metadata). ``pca_files`` is the one place that turns a name into them.
PCA_TENSORS_SUFFIX = ".safetensors"
PCA_SIDECAR_SUFFIX = ".json"


def pca_files(path: str | Path) -> tuple[Path, Path]:
    """(tensors file, JSON sidecar) of the PCA artifact ``path``.

    ``path`` is the artifact's name (``out/pca``) or either of its files (``out/pca.safetensors``,
    ``out/pca.json``); any other suffix is part of the name (``pca.v2`` -> ``pca.v2.safetensors``).
    """
    path = Path(path)
    if path.suffix in (PCA_TENSORS_SUFFIX, PCA_SIDECAR_SUFFIX):
        path = path.with_suffix("")
    return path.with_name(path.name + PCA_TENSORS_SUFFIX), path.with_name(path.name + PCA_SIDECAR_SUFFIX)


@dataclass
class PCAArtifact:
    """A fitted PCA: mean (C,), components (N, C), eigenvalues (N,) in float64, and its metadata.

    ``meta`` holds ``signature`` (the backbone's, see ``Backbone.signature``) plus the fit
    settings: resolution, sample count, sample seed, number of images, scaling.
    """

    mean: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def channels(self) -> int:
        return int(self.components.shape[1])

    def leading(self, n: int) -> PCAArtifact:
        """The first ``n`` components: exactly the ``n``-component fit of the same vectors.

        Exact, not an approximation: ``StreamingPCA.fit`` runs one ``eigh`` on a covariance that
        does not depend on ``n``, keeps the components in decreasing-eigenvalue order and fixes
        each one's sign on its own, so the ``n``-component fit is this fit's first ``n`` rows
        (same mean, same eigenvalues). A sweep over N therefore fits once, at the largest N.
        """
        if not 1 <= n <= self.n_components:
            raise LayoutError(f"leading({n}): this PCA has {self.n_components} components; need 1..that")
        meta = {**self.meta, "leading_of": self.n_components}
        return PCAArtifact(self.mean.clone(), self.components[:n].clone(), self.eigenvalues[:n].clone(), meta)

    def save(self, path: str | Path) -> Path:
        """Write the artifact's two files (``pca_files``, atomically); returns the tensors file."""
        st_path, json_path = pca_files(path)
        st_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mean": self.mean.double().contiguous(),
            "components": self.components.double().contiguous(),
            "eigenvalues": self.eigenvalues.double().contiguous(),
        }
        # One metadata key: safetensors writes its metadata map in hash order, so two keys
        # would make two fits of the same data differ in their header bytes.
        atomic_write_bytes(
            st_path, safetensors_bytes(tensors, metadata={"format": f"lumen-pca/{FORMAT_VERSION}"})
        )
        sidecar = {
            "format": "lumen-pca",
            "version": FORMAT_VERSION,
            "n_components": self.n_components,
            "channels": self.channels,
            "scaling": "unit_variance",  # layout = (f - mean) . components / sqrt(eigenvalue)
            "eigenvalues": [float(v) for v in self.eigenvalues],
            **self.meta,
        }
        atomic_write_text(json_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        return st_path

    @classmethod
    def load(cls, path: str | Path) -> PCAArtifact:
        """Read the artifact's two files and refuse one that would give wrong layouts.

        Everything ``apply`` relies on is checked (``artifact_problems``): a NaN, a zero
        eigenvalue or a tensor of the wrong length does not fail there - it gives NaN layouts or
        broadcasts silently - so it must fail here, naming the file.
        """
        st_path, json_path = pca_files(path)
        for p in (st_path, json_path):
            if not p.is_file():
                raise LayoutError(
                    f"{p}: PCA file missing; fix: fit it first (python -m factory.jobs.extract_layouts) "
                    "or point layout.pca to an existing "
                    f"<name>{PCA_TENSORS_SUFFIX} with its <name>{PCA_SIDECAR_SUFFIX}"
                )
        try:
            tensors = load_file(str(st_path))
            sidecar = json.loads(json_path.read_text())
        except Exception as e:
            raise LayoutError(f"{st_path}: cannot read the PCA artifact ({e}); fix: refit it") from e
        if sidecar.get("format") != "lumen-pca" or set(tensors) != {"mean", "components", "eigenvalues"}:
            raise LayoutError(f"{st_path}: not a LUMEN PCA artifact; fix: refit it")
        problems = artifact_problems(tensors["mean"], tensors["components"], tensors["eigenvalues"], sidecar)
        if problems:
            raise LayoutError(
                f"{st_path}: invalid PCA artifact ({'; '.join(problems)}); fix: refit it with the "
                "layout extraction job (python -m factory.jobs.extract_layouts), which rewrites "
                f"both {st_path.name} and {json_path.name}"
            )
        meta = {
            k: v
            for k, v in sidecar.items()
            if k not in ("format", "version", "n_components", "channels", "scaling", "eigenvalues")
        }
        return cls(tensors["mean"], tensors["components"], tensors["eigenvalues"], meta)

    def check_compatible(self, signature: dict[str, Any], source: str = "the backbone") -> None:
        """Refuse features from a backbone/config other than the one this PCA was fitted on."""
        fitted = self.meta.get("signature")
        if fitted is None:
            raise LayoutError("this PCA artifact has no backbone signature; fix: refit it")
        diffs = [
            f"{k}: fitted {fitted.get(k)!r}, now {signature.get(k)!r}"
            for k in sorted(set(fitted) | set(signature))
            if k not in INFORMATIONAL_FIELDS and fitted.get(k) != signature.get(k)
        ]
        if diffs:
            raise LayoutError(
                f"PCA was fitted on different features than {source} produces ({'; '.join(diffs)}); "
                "fix: refit the PCA with this backbone, or configure the backbone as it was at fit time"
            )

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, N, h, w) float32 layout with unit-variance channels."""
        if features.ndim != 4 or features.shape[1] != self.channels:
            raise LayoutError(
                f"PCA expects (B, {self.channels}, h, w) features, got {tuple(features.shape)}; "
                "fix: use the PCA fitted for this backbone"
            )
        dev = features.device
        mean = self.mean.to(device=dev, dtype=torch.float32)
        scale = self.eigenvalues.clamp_min(1e-12).rsqrt()
        proj = (self.components * scale[:, None]).to(device=dev, dtype=torch.float32)
        # one image at a time: the result for an image never depends on its batch companions
        return torch.stack(
            [torch.einsum("chw,kc->khw", f.float() - mean[:, None, None], proj) for f in features]
        )


__all__ = [
    "PCAArtifact",
    "artifact_problems",
    "StreamingPCA",
    "draw_vectors",
    "fit_pca",
    "pca_files",
    "sample_counts",
    "sample_positions",
    "stable_hash",
]
