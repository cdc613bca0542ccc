"""Streaming PCA: exactness against numpy SVD, byte-identical refits, sampling, artifact checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from factory.layout import (
    LayoutError,
    PCAArtifact,
    StreamingPCA,
    fit_pca,
    pca_files,
    sample_counts,
    sample_positions,
    stable_hash,
)


def correlated(n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) * np.linspace(3, 0.1, c)[:, None]
    return (rng.normal(size=(n, c)) @ mix + rng.normal(size=c) * 5).astype(np.float32)


def test_pca_equals_numpy_svd_of_centred_sample():
    x = correlated(3000, 24, 0)
    pca = StreamingPCA(24)
    for chunk in np.array_split(x, 7):  # streaming in uneven chunks
        pca.add(torch.from_numpy(chunk))
    art = pca.fit(8)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(art.mean.numpy(), x64.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(art.eigenvalues.numpy(), s[:8] ** 2 / (len(x) - 1), rtol=1e-9)
    for k in range(8):
        v = vt[k] * np.sign(vt[k][np.abs(vt[k]).argmax()])  # the artifact's sign rule
        np.testing.assert_allclose(art.components[k].numpy(), v, atol=1e-6)
        assert art.components[k][art.components[k].abs().argmax()] > 0
    assert art.meta["sample_count"] == 3000


def test_apply_gives_unit_variance_uncorrelated_channels():
    x = correlated(4000, 16, 1)
    art = fit_pca({"a": torch.from_numpy(x[:2000]), "b": torch.from_numpy(x[2000:])}, 4)
    feats = torch.from_numpy(x).T.reshape(1, 16, 40, 100)
    layout = art.apply(feats)[0].reshape(4, -1).double()
    cov = torch.cov(layout)
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=1e-4, rtol=0)


def test_fitting_twice_gives_identical_bytes(tmp_path):
    vectors = {f"k{i}": torch.from_numpy(correlated(50, 12, i)) for i in range(6)}
    reordered = dict(reversed(list(vectors.items())))  # arrival order must not matter
    a = fit_pca(vectors, 5, {"signature": {"backbone": "x"}}).save(tmp_path / "a")
    b = fit_pca(reordered, 5, {"signature": {"backbone": "x"}}).save(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_save_load_round_trip_and_sidecar(tmp_path):
    art = fit_pca(
        {"k": torch.from_numpy(correlated(100, 10, 2))}, 3, {"signature": {"backbone": "x", "layers": [2]}}
    )
    path = art.save(tmp_path / "pca")
    assert path == tmp_path / "pca.safetensors"
    side = json.loads((tmp_path / "pca.json").read_text())
    assert side["n_components"] == 3 and side["channels"] == 10 and side["sample_count"] == 100
    assert side["scaling"] == "unit_variance" and len(side["eigenvalues"]) == 3
    again = PCAArtifact.load(tmp_path / "pca.safetensors")
    assert torch.equal(again.components, art.components) and again.meta == art.meta


def test_pca_files_name_both_files_from_the_name_or_either_file(tmp_path):
    want = (tmp_path / "pca.safetensors", tmp_path / "pca.json")
    for given in ("pca", "pca.safetensors", "pca.json"):
        assert pca_files(tmp_path / given) == want
    assert pca_files("out/pca.v2") == (Path("out/pca.v2.safetensors"), Path("out/pca.v2.json"))
    art = fit_pca({"k": torch.from_numpy(correlated(50, 6, 4))}, 2, {"signature": {}})
    assert art.save(tmp_path / "pca.json") == want[0] and all(p.is_file() for p in want)


def test_missing_or_foreign_pca_is_refused(tmp_path):
    with pytest.raises(LayoutError, match="pca.safetensors: PCA file missing.*fix"):
        PCAArtifact.load(tmp_path / "pca")
    art = fit_pca(
        {"k": torch.from_numpy(correlated(100, 10, 3))},
        3,
        {"signature": {"backbone": "sd-unet", "timestep": 100}},
    )
    with pytest.raises(LayoutError, match="timestep: fitted 100, now 200.*refit"):
        art.check_compatible({"backbone": "sd-unet", "timestep": 200})
    art.check_compatible({"backbone": "sd-unet", "timestep": 100, "model_ref": "moved/folder"} | {})
    with pytest.raises(LayoutError, match=r"expects \(B, 10, h, w\)"):
        art.apply(torch.zeros(1, 11, 2, 2))


def _damage(tensors: dict[str, torch.Tensor], sidecar: dict, case: str) -> None:
    """Break a saved artifact (3 components over 10 channels) the way ``case`` names."""
    if case == "nan mean":
        tensors["mean"][2] = float("nan")
    elif case == "inf component":
        tensors["components"][1, 4] = float("inf")
    elif case == "zero eigenvalue":
        tensors["eigenvalues"][2] = 0.0
    elif case == "negative eigenvalue":
        tensors["eigenvalues"][1] = -0.5
    elif case == "integer components":
        tensors["components"] = tensors["components"].round().long()
    elif case == "mean too long":
        tensors["mean"] = torch.cat([tensors["mean"], torch.zeros(1, dtype=torch.float64)])
    elif case == "eigenvalues too short":
        tensors["eigenvalues"] = tensors["eigenvalues"][:2].clone()
    elif case == "fewer components than recorded":
        tensors["components"] = tensors["components"][:2].clone()
        tensors["eigenvalues"] = tensors["eigenvalues"][:2].clone()
    elif case == "sidecar records another N":
        sidecar["n_components"] = 4


DAMAGE = [
    ("nan mean", r"mean holds 1 NaN/inf"),
    ("inf component", r"components holds 1 NaN/inf"),
    ("zero eigenvalue", r"eigenvalue\(s\) \[2\] are \[0\.0\]: explained variance must be > 0"),
    ("negative eigenvalue", r"eigenvalue\(s\) \[1\] are \[-0\.5\]"),
    ("integer components", r"components has dtype torch\.int64, not floating point"),
    ("mean too long", r"mean has 11 channels but components have 10"),
    ("eigenvalues too short", r"2 eigenvalues for 3 components"),
    ("fewer components than recorded", r"records n_components 3 but the tensors hold 2"),
    ("sidecar records another N", r"records n_components 4 but the tensors hold 3"),
]


@pytest.mark.parametrize(("case", "problem"), DAMAGE, ids=[case for case, _ in DAMAGE])
def test_a_damaged_pca_artifact_is_refused_on_load_naming_file_problem_and_fix(tmp_path, case, problem):
    """Each of these loaded unchecked and then gave NaN layouts or broadcast silently in apply."""
    art = fit_pca({"k": torch.from_numpy(correlated(100, 10, 5))}, 3, {"signature": {"backbone": "x"}})
    st_path = art.save(tmp_path / "pca")
    json_path = tmp_path / "pca.json"
    tensors = {k: v.clone() for k, v in load_file(str(st_path)).items()}
    sidecar = json.loads(json_path.read_text())
    _damage(tensors, sidecar, case)
    save_file(tensors, str(st_path), metadata={"format": "lumen-pca/1"})
    json_path.write_text(json.dumps(sidecar))
    with pytest.raises(LayoutError, match=problem) as err:
        PCAArtifact.load(tmp_path / "pca")
    message = str(err.value)
    assert message.startswith(f"{st_path}: invalid PCA artifact")
    assert "fix: refit it with the layout extraction job (python -m factory.jobs.extract_layouts)" in message


def test_a_fit_without_variance_in_a_requested_component_is_refused():
    """Vectors spanning 3 of 6 channels cannot give 5 components: fitting says so instead of
    writing zero eigenvalues that ``load`` (and ``apply``) could not use."""
    x = np.concatenate([correlated(200, 3, 6), np.zeros((200, 3), np.float32)], axis=1)
    with pytest.raises(
        LayoutError, match=r"only 3 of the 5 requested PCA components have variance.*pca_samples"
    ):
        fit_pca({"k": torch.from_numpy(x)}, 5)
    assert fit_pca({"k": torch.from_numpy(x)}, 3).n_components == 3


def test_sampling_is_reproducible_and_batch_independent():
    keys = [f"img{i}" for i in range(7)]
    counts = sample_counts(keys, 100, seed=0)
    assert sum(counts.values()) == 100 and set(counts.values()) <= {14, 15}
    assert sample_counts(list(reversed(keys)), 100, seed=0) == counts
    pos = sample_positions("img3", 20, 16, 32, seed=0)
    assert torch.equal(pos, sample_positions("img3", 20, 16, 32, seed=0))
    assert len(set(pos.tolist())) == 20 and int(pos.max()) < 16 * 32
    assert not torch.equal(pos, sample_positions("img4", 20, 16, 32, seed=0))
    assert not torch.equal(pos, sample_positions("img3", 20, 16, 32, seed=1))
    assert torch.equal(sample_positions("img3", 10_000, 4, 4, seed=0), torch.arange(16))


def test_sampling_hash_is_pinned():
    """Pinned values: a change here changes which vectors every PCA fit draws (and its bytes)."""
    assert stable_hash(0, "positions", "aachen_000000_000019") == 3014213701138088885
    assert sample_positions("aachen_000000_000019", 5, 4, 8, seed=0).tolist() == [0, 3, 6, 8, 18]
    assert sample_counts(["a", "b", "c"], 5, seed=0) == {"a": 1, "b": 2, "c": 2}


def test_the_leading_components_of_a_fit_are_the_fit_with_fewer_components():
    """factory.eval.sweep fits once at the largest N and keeps the first N rows for each
    smaller N: that must be the N-component fit itself, bit for bit (not just close)."""
    vectors = {f"k{i}": torch.from_numpy(correlated(80, 12, i)) for i in range(5)}
    full = fit_pca(vectors, 8, {"signature": {"backbone": "x"}})
    for n in (1, 3, 8):
        fitted = fit_pca(vectors, n, {"signature": {"backbone": "x"}})
        kept = full.leading(n)
        for name in ("mean", "components", "eigenvalues"):
            assert torch.equal(getattr(kept, name), getattr(fitted, name)), (n, name)
        assert kept.n_components == n and kept.meta["leading_of"] == 8
    with pytest.raises(LayoutError, match="8 components"):
        full.leading(9)
