"""The field's standard tools read our shards correctly (docs/shards.md), on shards written by
the real generation job (test-double synthesizer, in-process executor) and the real layout
extraction job:

- stock webdataset's image decoders (``.decode("pil")``, ``"rgb8"``, ``"l8"``, ...) really clip
  the 16-bit members to 255 - the warning in the docs is true;
- the docs' stock-webdataset recipe (executed from docs/shards.md itself) reads every member with
  the reference's values: 16-bit instanceids/disparity exact, JSON parsed;
- our reading API (factory.data.read) does too, layouts included, and refuses pickles;
- ``ray.data.read_webdataset`` (default decoder) keeps 16-bit PNGs, ``decoder=None`` gives bytes;
- Hugging Face ``datasets``' webdataset builder keeps them too.

Label members are also checked byte for byte against the reference's files.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from factory.data.cityscapes import list_cityscapes
from factory.data.members import AGREE_MEMBER, LABEL_MEMBERS, read_shard_samples
from factory.data.read import decode_member, iter_samples, to_torch
from factory.data.sample import DataError, SampleRef
from factory.shards import ShardWriter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "jobs"))
from jobcfg import make_cfg  # noqa: E402

SIXTEEN_BIT = ("instanceids.png", "disparity.png")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def city(city_root, tmp_path_factory) -> Path:
    """A copy of the procedural Cityscapes with labelTrainIds written by cityscapesscripts, so
    the shards carry every label member the reader finds (the session city stays pristine)."""
    from cityscapesscripts.preparation import createTrainIdLabelImgs

    root = tmp_path_factory.mktemp("interop_city")
    shutil.copytree(city_root / "cityscapes", root / "cityscapes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CITYSCAPES_DATASET", str(root / "cityscapes"))
        createTrainIdLabelImgs.main()
    return root


@pytest.fixture(scope="module")
def generated(city, tmp_path_factory) -> list[Path]:
    """The generation job's shards (3 references x 2 variants, 2 samples per shard)."""
    from factory.jobs.generate import run

    out = tmp_path_factory.mktemp("interop_out")
    summary = run(make_cfg(city, out, "executor=in_process"))
    assert summary.counts == {"ok": 6}
    return sorted((out / "shards").glob("*.tar"))


@pytest.fixture(scope="module")
def refs(city) -> dict[str, SampleRef]:
    return {r.key: r for r in list_cityscapes(city / "cityscapes", "train").refs}


@pytest.fixture(scope="module")
def raw(generated) -> dict[str, dict[str, Any]]:
    """Every sample's raw member bytes (stock webdataset, no decoding), by key."""
    return {s["__key__"]: s for s in read_shard_samples(generated)}


def _reference_values(ref: SampleRef) -> dict[str, Any]:
    """What each label member must decode to: the reference file, read as stored."""
    out: dict[str, Any] = {}
    for kind, suffix in LABEL_MEMBERS.items():
        path = ref.paths.get(kind)
        if path is None:
            continue
        if suffix.endswith(".png"):
            with Image.open(path) as im:
                out[suffix] = np.asarray(im)
        else:
            out[suffix] = json.loads(Path(path).read_text())
    return out


def check_sample(sample: dict[str, Any], refs: dict[str, SampleRef], raw: dict[str, dict[str, Any]]) -> None:
    """``sample`` (one tool's decoding) holds every member with the reference's values."""
    key = sample["__key__"]
    meta = sample["json"]
    assert key == f"{meta['source_key']}__{meta['variant']}"
    expected = _reference_values(refs[meta["source_key"]])
    members = {k for k in sample if not k.startswith("__")}
    assert members == {"png", "json", *expected}, key  # every member the reference has, nothing lost
    assert {"labeltrainids.png", *SIXTEEN_BIT} <= members
    for suffix, want in expected.items():
        got = sample[suffix]
        if isinstance(want, np.ndarray):
            got = np.asarray(got)
            assert got.dtype == want.dtype and got.shape == want.shape, (key, suffix, got.dtype, got.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{key}.{suffix}")
        else:
            assert got == want, (key, suffix)
    image = np.asarray(sample["png"])
    with Image.open(io.BytesIO(raw[key]["png"])) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(image, np.asarray(im))
    assert image.dtype == np.uint8 and image.shape == (*meta["image_size"], 3)
    assert meta == json.loads(raw[key]["json"])


# ---------------------------------------------------------------------------- the shards themselves
def test_label_members_are_the_references_bytes_and_really_16_bit(raw, refs):
    """The premise of every test below: byte-identical label files, 16-bit values above 255."""
    assert len(raw) == 6
    instance_ids: set[int] = set()
    for key, s in raw.items():
        ref = refs[json.loads(s["json"])["source_key"]]
        for kind, suffix in LABEL_MEMBERS.items():
            if kind in ref.paths:
                assert s[suffix] == Path(ref.paths[kind]).read_bytes(), (key, suffix)
        values = _reference_values(ref)
        for suffix in SIXTEEN_BIT:
            with Image.open(io.BytesIO(s[suffix])) as im:
                assert im.mode == "I;16", (key, suffix, im.mode)
        instance_ids.update(int(v) for v in np.unique(values["instanceids.png"]) if v >= 1000)
        assert values["instanceids.png"].max() > 255 and values["disparity.png"].max() > 255, key
    assert {v // 1000 for v in instance_ids} >= {24, 26}  # person and car instances: c * 1000 + k


# ---------------------------------------------------------------------------- stock webdataset
@pytest.mark.parametrize("spec", ["pil", "rgb8", "l8", "torchl8"])
def test_stock_webdataset_image_decoders_clip_16_bit_members(generated, raw, spec):
    """What the docs warn about: webdataset converts every PNG to 8-bit, silently."""
    import webdataset as wds

    for s in wds.WebDataset([str(p) for p in generated], shardshuffle=False).decode(spec):
        for suffix in SIXTEEN_BIT:
            with Image.open(io.BytesIO(raw[s["__key__"]][suffix])) as im:
                true = np.asarray(im)
            got = np.asarray(s[suffix])
            assert got.dtype == np.uint8 and got.max() == 255 < true.max(), (spec, suffix)
            # every value above 255 came out as 255: the ids and disparities are gone
            if got.ndim == 3:
                got = got[..., 0]
            np.testing.assert_array_equal(got, np.minimum(true, 255))


def _docs_recipe() -> str:
    """The stock-webdataset recipe exactly as docs/shards.md states it."""
    text = (REPO / "docs" / "shards.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def png_unchanged" in b]
    assert len(blocks) == 1, "docs/shards.md should hold one stock-webdataset recipe"
    return blocks[0]


def test_documented_webdataset_recipe_reads_every_member_exactly(generated, refs, raw):
    recipe = _docs_recipe()
    namespace: dict[str, Any] = {"urls": [str(p) for p in generated]}
    exec(compile(recipe, "docs/shards.md", "exec"), namespace)
    # the recipe keeps every single-channel PNG member of the format away from the 8-bit decoder
    label_pngs = {s for s in (*LABEL_MEMBERS.values(), AGREE_MEMBER) if s.endswith(".png")}
    assert label_pngs == set(namespace["LABEL_PNGS"].split())
    samples = list(namespace["dataset"])
    assert sorted(s["__key__"] for s in samples) == sorted(raw)
    for s in samples:
        check_sample(s, refs, raw)


# ---------------------------------------------------------------------------- factory.data.read
def test_iter_samples_reads_every_member_exactly(generated, refs, raw):
    samples = list(iter_samples(generated))
    assert [s["__key__"] for s in samples] == list(raw)  # shard order, then tar order
    for s in samples:
        check_sample(s, refs, raw)
        t = to_torch(s)
        for suffix in SIXTEEN_BIT:
            assert str(t[suffix].dtype) == "torch.int32"
            np.testing.assert_array_equal(t[suffix].numpy(), s[suffix])
        assert str(t["labelids.png"].dtype) == "torch.uint8" and t["json"] == s["json"]


@pytest.fixture(scope="module")
def layout_shards(city, tmp_path_factory) -> list[Path]:
    """The layout extraction job's shards (tiny backbone, 2 references)."""
    from factory.config import load_config
    from factory.jobs.extract_layouts import ExtractConfig, run

    out = tmp_path_factory.mktemp("interop_layouts")
    cfg = load_config(
        ExtractConfig,
        None,
        [
            f"out={out}",
            f"dataset.root={city / 'cityscapes'}",
            "dataset.limit=2",
            "layout.model=tiny",
            "layout.pca_samples=200",
            "layout.n_components=4",
            "layout.batch_size=2",
            "layout.device=cpu",
            "progress=false",
            "executor=in_process",
        ],
    )
    assert run(cfg).counts == {"ok": 2}
    return sorted((out / "shards").glob("*.tar"))


def test_iter_samples_reads_layout_shards(layout_shards):
    import webdataset as wds

    ours = list(iter_samples(layout_shards))
    stock = list(wds.WebDataset([str(p) for p in layout_shards], shardshuffle=False).decode())
    assert len(ours) == len(stock) == 2
    for s, w in zip(ours, stock):
        layout, meta = s["layout.npy"], s["json"]
        assert layout.dtype == np.float16 and layout.ndim == 3 and list(layout.shape) == meta["shape"]
        assert layout.shape[0] == 4 and np.isfinite(layout).all()  # layout.n_components
        assert meta["key"] == s["__key__"] and meta["dtype"] == "float16"
        np.testing.assert_array_equal(layout, w["layout.npy"])  # stock .npy decoding agrees
        assert w["json"] == meta


def test_iter_samples_refuses_a_pickled_npy_and_a_compressed_shard(tmp_path, hostile_shard):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    w = ShardWriter(tmp_path / "pickle.tar")
    w.add_members("k", {"layout.npy": buf.getvalue(), "json": b"{}"})
    w.close()
    with pytest.raises(DataError, match=r"k\.layout\.npy.*not a plain \.npy"):
        list(iter_samples([tmp_path / "pickle.tar"]))
    gz = hostile_shard.gzip((tmp_path / "pickle.tar").read_bytes(), tmp_path / "gz.tar")
    with pytest.raises(DataError, match="gzip-compressed"):
        list(iter_samples([gz]))
    with pytest.raises(DataError, match="does not decode"):
        decode_member("instanceids.png", b"\x89PNG\r\n\x1a\n truncated", "x.instanceids.png")


# ---------------------------------------------------------------------------- Ray Data
def test_ray_data_read_webdataset_keeps_16_bit_members(generated, refs, raw, ray_local):
    """Ray's default decoder is ``np.asarray(PIL.Image.open(...))``: no mode conversion."""
    import ray

    rows = ray.data.read_webdataset([str(p) for p in generated]).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(raw)
    for r in rows:
        check_sample({k: v for k, v in r.items() if k != "__url__"}, refs, raw)
    raw_rows = ray.data.read_webdataset([str(p) for p in generated], decoder=None).take_all()
    for r in raw_rows:
        for suffix, data in raw[r["__key__"]].items():
            if not suffix.startswith("__"):
                assert r[suffix] == data, suffix


# ---------------------------------------------------------------------------- Hugging Face datasets
def test_hf_datasets_webdataset_builder_keeps_16_bit_members(generated, refs, raw, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(p) for p in generated]},
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert len(ds) == 6
    for row in ds:  # PIL images in their own mode (16-bit: "I;16"), JSON as dicts
        assert row["instanceids.png"].mode == "I;16"
        check_sample({k: v for k, v in row.items() if k != "__url__"}, refs, raw)
    for row, arrays in zip(ds, ds.with_format("numpy")):  # numpy format: 16-bit PNGs as uint16
        for suffix in SIXTEEN_BIT:
            assert arrays[suffix].dtype == np.uint16
            np.testing.assert_array_equal(arrays[suffix], np.asarray(row[suffix]))


def test_hf_datasets_drops_json_keys_first_seen_after_five_samples(tmp_path, monkeypatch):
    """The docs' JSON caveat is true: the struct schema comes from the first 5 samples."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    w = ShardWriter(tmp_path / "shard-000000.tar")
    for i in range(7):
        meta = {"i": i, **({"late": 1.5} if i == 6 else {})}
        w.add_members(f"s{i}", {"json": json.dumps(meta).encode(), "txt": b"x"})
    w.close()
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": [str(tmp_path / "shard-000000.tar")]},
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert ds[6]["json"] == {"i": 6}  # "late" is gone, without an error
    ours = {s["__key__"]: s["json"] for s in iter_samples([tmp_path / "shard-000000.tar"])}
    assert ours["s6"] == {"i": 6, "late": 1.5}
