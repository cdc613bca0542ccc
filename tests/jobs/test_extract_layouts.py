"""The layout extraction job: PCA and layouts identical for 1 vs 2 actors, resume, bad samples."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from factory.config import ConfigError, load_config
from factory.jobs.extract_layouts import ExtractConfig, run
from factory.shards import Manifest, read_shard_samples


def make_cfg(root, out, *extra):
    return load_config(
        ExtractConfig,
        None,
        [
            f"out={out}",
            f"dataset.root={root / 'cityscapes'}",
            "dataset.limit=4",
            "layout.model=tiny",
            "layout.pca_samples=200",
            "layout.n_components=4",
            "layout.batch_size=2",
            "layout.micro_batch=2",
            "layout.device=cpu",
            "samples_per_shard=2",
            "progress=false",
            *extra,
        ],
    )


def layouts(out):
    got = {}
    for s in read_shard_samples(sorted((out / "shards").glob("*.tar"))):
        got[s["__key__"]] = np.load(io.BytesIO(s["layout.npy"]))
    return got


@pytest.fixture(scope="module")
def one_actor(city_root, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return out, run(make_cfg(city_root, out, "ray.num_actors=1"))


def test_layouts_identical_for_one_and_two_actors(one_actor, city_root, tmp_path):
    out1, s1 = one_actor
    s2 = run(make_cfg(city_root, tmp_path, "ray.num_actors=2"))
    assert s1.fitted and s2.fitted and s1.counts == s2.counts == {"ok": 4}
    # the same PCA bit for bit (tensors compared: safetensors writes its metadata map in a
    # per-process order, so file bytes may differ)
    p1, p2 = load_file(out1 / "pca.safetensors"), load_file(tmp_path / "pca.safetensors")
    assert sorted(p1) == sorted(p2) and all(torch.equal(p1[k], p2[k]) for k in p1)
    a, b = layouts(out1), layouts(tmp_path)
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        # N x the layer-8 grid: H/16 x W/16 for SD; the tiny model's grid is H/4 x W/4 (64x128 in)
        assert a[k].dtype == np.float16 and a[k].shape == (4, 16, 32)
        assert np.array_equal(a[k], b[k])
    meta = json.loads(next(read_shard_samples([sorted((out1 / "shards").glob("*.tar"))[0]]))["json"])
    assert meta["shape"] == [4, 16, 32] and meta["dtype"] == "float16"


def test_rerun_skips_finished_shards(one_actor, city_root):
    out, _ = one_actor
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    again = run(make_cfg(city_root, out, "ray.num_actors=1"))
    assert not again.fitted and again.shards_done == []
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before


def test_bad_sample_recorded_and_job_goes_on(city_root, ray_local, tmp_path):
    city = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", city / "cityscapes")
    img = sorted((city / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[1]
    img.write_bytes(b"garbage")
    out = tmp_path / "out"
    summary = run(make_cfg(city, out, "ray.num_actors=1"))
    assert summary.counts == {"ok": 3, "failed": 1}
    failed = [r for r in Manifest(out / "manifest").rows() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["key"] == img.name.removesuffix("_leftImg8bit.png")
    assert "unreadable" in failed[0]["reason"]
    assert len(layouts(out)) == 3


def test_config_errors_name_the_field(city_root, tmp_path):
    with pytest.raises(ConfigError, match="timestep"):
        make_cfg(city_root, tmp_path, "layout.timestep=5000")
    with pytest.raises(ConfigError, match="samples_per_shard"):
        make_cfg(city_root, tmp_path, "samples_per_shard=0")
    with pytest.raises(ConfigError, match="load_threads"):
        make_cfg(city_root, tmp_path, "load_threads=0")


def test_loader_threads_keep_order_sizes_and_bad_samples(city_root, tmp_path):
    """The prefetching loader: same batches whatever the thread count, original sizes kept."""
    from factory.data.cityscapes import list_cityscapes
    from factory.jobs.extract_layouts import load_batches

    city = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", city / "cityscapes")
    refs = list_cityscapes(city / "cityscapes", "train").refs[:5]
    refs[2].paths["image"].write_bytes(b"garbage")
    one = list(load_batches(refs, 2, 1, (32, 64)))
    four = list(load_batches(refs, 2, 4, (32, 64)))
    assert [[r.key for r, *_ in b] for b in four] == [[r.key for r in refs[i : i + 2]] for i in (0, 2, 4)]
    for b1, b4 in zip(one, four):
        for (_, s1, size1, p1), (_, s4, size4, p4) in zip(b1, b4):
            assert p1 == p4 and size1 == size4
            if s1 is None:
                assert s4 is None and "unreadable" in p1
            else:
                assert s4.image.shape == (32, 64, 3) and np.array_equal(s1.image, s4.image)
                assert size1 == (64, 128)  # the reference's size, before the resize
    assert sum(s is None for b in four for _, s, _, _ in b) == 1


def test_vae_latent_backbone_end_to_end_in_process(city_root, tmp_path):
    """An ablation backbone through the public job: the tiny VAE's 4 latent channels, PCA to 4."""
    from factory.layout import LayoutError

    summary = run(make_cfg(city_root, tmp_path / "ok", "executor=in_process", "layout.backbone=vae-latent"))
    assert summary.fitted and summary.counts == {"ok": 4}
    sidecar = json.loads((tmp_path / "ok" / "pca.json").read_text())
    assert sidecar["signature"]["backbone"] == "vae-latent" and sidecar["channels"] == 4
    got = layouts(tmp_path / "ok")
    assert len(got) == 4 and all(a.shape == (4, 16, 32) for a in got.values())  # 64x128 / VAE stride 4
    # more components than latent channels: refused on the driver before any sampling
    out = tmp_path / "too_many"
    cfg = make_cfg(
        city_root, out, "executor=in_process", "layout.backbone=vae-latent", "layout.n_components=8"
    )
    with pytest.raises(LayoutError, match="n_components 8 exceeds the 4 feature channels"):
        run(cfg)
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())
