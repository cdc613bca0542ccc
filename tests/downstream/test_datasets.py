"""Reading Cityscapes, ACDC and shards into mmseg samples; mixing; bad-input errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from downstream.segformer.labels import LABELID_TO_TRAINID
from factory.config import ConfigError
from factory.data.sample import DataError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "downstream"
LOAD = [dict(type="LoadLumenImage"), dict(type="LoadLumenLabels")]


def _build(cfg):
    from mmseg.registry import DATASETS

    return DATASETS.build(cfg)


def test_cityscapes_labelids_become_trainids(cs_root):
    ds = _build(dict(type="CityscapesLabelIdsDataset", data_root=str(cs_root), split="train", pipeline=LOAD))
    assert len(ds) == 6
    item = ds[0]
    info = ds.get_data_info(0)
    raw = np.asarray(Image.open(info["seg_map_path"]))
    np.testing.assert_array_equal(item["gt_seg_map"], LABELID_TO_TRAINID[raw])
    assert item["img"].shape[:2] == raw.shape and item["img"].dtype == np.uint8
    assert info["source"] == "real" and info["weather"] == "clear"
    assert set(np.unique(item["gt_seg_map"])) <= set(range(19)) | {255}


def test_acdc_per_weather(acdc_root):
    for weather in ("fog", "night", "rain", "snow"):
        ds = _build(
            dict(type="ACDCDataset", data_root=str(acdc_root), weather=weather, split="val", pipeline=LOAD)
        )
        assert len(ds) == 3
        info = ds.get_data_info(0)
        assert (
            info["weather"] == weather
            and info["dataset"] == "acdc"
            and "/rgb_anon/" + weather in info["img_path"]
        )
        item = ds[0]
        np.testing.assert_array_equal(item["gt_seg_map"], np.asarray(Image.open(info["seg_map_path"])))


def test_acdc_missing_weather_folder(acdc_root, tmp_path):
    import shutil

    partial = tmp_path / "acdc"
    shutil.copytree(acdc_root / "rgb_anon" / "fog", partial / "rgb_anon" / "fog")
    with pytest.raises(DataError, match=r"rgb_anon/snow/val.*ACDC folder for weather 'snow'"):
        _build(dict(type="ACDCDataset", data_root=str(partial), weather="snow", pipeline=LOAD))
    with pytest.raises(ValueError, match="sandstorm"):
        _build(dict(type="ACDCDataset", data_root=str(acdc_root), weather="sandstorm", pipeline=LOAD))


def test_shards_image_resized_to_labels(ref_shards, cs_root):
    ds = _build(dict(type="LumenShardDataset", shards=[str(p) for p in ref_shards], pipeline=LOAD))
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        key = item["key"]
        city = key.split("_")[0]
        raw = np.asarray(Image.open(cs_root / "gtFine" / "train" / city / f"{key}_gtFine_labelIds.png"))
        # labels are the reference's (converted), the half-size image was resized up to them
        np.testing.assert_array_equal(item["gt_seg_map"], LABELID_TO_TRAINID[raw])
        assert item["img"].shape == (*raw.shape, 3)
        assert item["source"] == "synth"


def _write_shard(path: Path, key: str, image: np.ndarray, labels: np.ndarray) -> None:
    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    with tarfile.open(path, "w") as tar:
        for suffix, data in (
            ("png", png(image)),
            ("labelids.png", png(labels)),
            ("json", json.dumps({"source_key": key, "variant": "fog"}).encode()),
        ):
            ti = tarfile.TarInfo(f"{key}.{suffix}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def test_shard_with_trainids_declared_as_labelids(cs_root, tmp_path):
    lab_path = sorted((cs_root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[0]
    labelids = np.asarray(Image.open(lab_path))
    trainids = LABELID_TO_TRAINID[labelids]
    img = np.zeros((*labelids.shape, 3), np.uint8)
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    _write_shard(good, "k_000000_000001__fog", img, labelids)
    _write_shard(bad, "k_000000_000002__fog", img, trainids)
    ok = _build(dict(type="LumenShardDataset", shards=str(good), pipeline=LOAD))
    assert ok[0]["gt_seg_map"].shape == labelids.shape
    ds = _build(dict(type="LumenShardDataset", shards=str(bad), pipeline=LOAD))
    with pytest.raises(DataError, match=r"bad\.tar#k_000000_000002__fog.*looks like a labelTrainIds map"):
        ds.pipeline(ds.get_data_info(0))


def test_trainids_heuristic_without_255():
    from downstream.segformer.labels import labelids_to_trainids

    road_heavy = np.zeros((8, 8), np.uint8)  # trainIds: road, building, cars; no ignore pixels
    road_heavy[:2] = 13
    road_heavy[2:4] = 2
    with pytest.raises(DataError, match="labelTrainIds"):
        labelids_to_trainids(road_heavy, "x.png")
    real = np.full((8, 8), 7, np.uint8)  # labelIds: road(7) + sky(23)
    real[:2] = 23
    assert set(np.unique(labelids_to_trainids(real))) == {0, 10}


def test_a_compressed_or_oversized_shard_is_refused_before_it_is_read(ref_shards, tmp_path, hostile_shard):
    """Indexing refuses, naming the file: a gzip named .tar (by its magic bytes, not a vague
    'invalid header'), and a member whose header declares more than ``max_member_bytes`` -
    before any member is read (the sparse 64 MiB + 1 member is never touched)."""
    from factory.data.members import MAX_MEMBER_BYTES

    gz = hostile_shard.gzip(ref_shards[0].read_bytes(), tmp_path / "gz.tar")
    with pytest.raises(DataError, match=r"gz\.tar: gzip-compressed data named like a tar"):
        _build(dict(type="LumenShardDataset", shards=str(gz), pipeline=LOAD))
    huge = hostile_shard.sparse(tmp_path / "huge.tar", "k_000000_000001__fog", MAX_MEMBER_BYTES + 1)
    with pytest.raises(DataError, match=r"huge\.tar: member 'k_000000_000001__fog\.png' declares"):
        _build(dict(type="LumenShardDataset", shards=str(huge), pipeline=LOAD))
    with pytest.raises(DataError, match="above the 1000-byte limit"):  # the limit is a knob
        _build(
            dict(type="LumenShardDataset", shards=str(ref_shards[0]), max_member_bytes=1000, pipeline=LOAD)
        )


def _job_shards(cs_root: Path, out: Path, per_shard: int = 3) -> list[Path]:
    """The city's train references written as a job writes them: ``out/shards/shard-NNNNNN.tar``."""
    from factory.data.cityscapes import list_cityscapes
    from factory.shards import ShardWriter, label_files

    refs = list_cityscapes(cs_root, "train").refs
    paths = []
    for i in range(0, len(refs), per_shard):
        paths.append(out / "shards" / f"shard-{i // per_shard:06d}.tar")
        w = ShardWriter(paths[-1])
        for ref in refs[i : i + per_shard]:
            image = np.asarray(Image.open(ref.paths["image"]).convert("RGB"))
            w.add(f"{ref.key}__fog", image, label_files(ref), {"source_key": ref.key, "variant": "fog"})
        w.close()
    return paths


def test_a_shard_cut_at_a_member_boundary_is_refused_against_its_manifest(cs_root, tmp_path, job_record):
    """A valid but shorter tar (cut at a member boundary, end marker added) was used with the
    samples it still had; its manifest part records one more: an error naming the shard."""
    shards = _job_shards(cs_root, tmp_path / "out")
    for shard in shards:
        job_record.record(shard)
    glob = str(tmp_path / "out" / "shards" / "*.tar")
    assert len(_build(dict(type="LumenShardDataset", shards=glob, pipeline=LOAD))) == 6
    lost = job_record.cut(shards[1])
    with pytest.raises(
        DataError,
        match=r"shard-000001\.tar: holds 2 samples but its manifest part .*shard-000001\.parquet records 3",
    ) as err:
        _build(dict(type="LumenShardDataset", shards=glob, pipeline=LOAD))
    assert lost in str(err.value) and "rerun the generation job" in str(err.value)
    # a shard the job never committed (no part) has no record to trust either
    (tmp_path / "out" / "manifest" / "shard-000001.parquet").unlink()
    with pytest.raises(
        DataError, match=r"shard-000001\.tar: the job's manifest .* has no part for this shard"
    ):
        _build(dict(type="LumenShardDataset", shards=glob, pipeline=LOAD))


def test_a_shard_cut_without_its_end_marker_is_refused_without_a_manifest(cs_root, tmp_path, job_record):
    """No manifest beside the shards: a tar cut at a member boundary still lacks its end-of-archive
    marker, which the index now checks (it read the remaining samples silently)."""
    shards = _job_shards(cs_root, tmp_path / "out")
    job_record.cut(shards[0], end_marker=False)
    with pytest.raises(DataError, match=r"shard-000000\.tar: truncated tar"):
        _build(dict(type="LumenShardDataset", shards=[str(p) for p in shards], pipeline=LOAD))


def test_a_key_in_two_shards_is_an_error_naming_both(cs_root, tmp_path):
    """The same sample in two shards (two jobs' shards in one folder, a shard copied) was
    listed - and drawn - twice."""
    shards = _job_shards(cs_root, tmp_path / "out")
    copy = tmp_path / "out" / "shards" / "shard-000002.tar"
    copy.write_bytes(shards[0].read_bytes())
    with pytest.raises(
        DataError, match=r"shard-000002\.tar: sample '.*__fog' is also in .*shard-000000\.tar"
    ) as err:
        _build(
            dict(type="LumenShardDataset", shards=str(tmp_path / "out" / "shards" / "*.tar"), pipeline=LOAD)
        )
    assert err.value.path == copy


PACK = [*LOAD, dict(type="PackSegInputs", meta_keys=("img_path", "key", "source"))]


def test_a_training_sample_with_out_of_range_label_ids_is_skipped_and_named(bad_label_shard):
    """Drawn in training, the sample with labelIds 250 is replaced by another and named in the
    replacement's metainfo (what SkippedSampleHook writes down); evaluation still raises."""
    shard, good, bad = bad_label_shard
    ds = _build(dict(type="LumenShardDataset", shards=str(shard), pipeline=PACK))
    bad_idx = [ds.get_data_info(i)["key"] for i in range(len(ds))].index(bad)
    item = ds[bad_idx]
    meta = item["data_samples"].metainfo
    assert meta["key"] == good
    skipped = meta["skipped_samples"]
    assert {s["key"] for s in skipped} == {bad} and all(s["source"] == "synth" for s in skipped)
    assert "holds values [250] above 33" in skipped[0]["reason"] and str(shard) in skipped[0]["path"]
    assert "skipped_samples" not in ds[1 - bad_idx]["data_samples"].metainfo
    scored = _build(dict(type="LumenShardDataset", shards=str(shard), pipeline=PACK, test_mode=True))
    with pytest.raises(DataError, match=r"\[250\] above 33"):
        scored[bad_idx]


def test_a_training_sample_with_out_of_range_train_ids_is_skipped(acdc_root, tmp_path):
    """The same for trainIds (ACDC's labels): 40 is neither a class (0..18) nor ignore (255)."""
    import shutil

    root = tmp_path / "acdc"
    shutil.copytree(acdc_root, root)
    ds = _build(dict(type="ACDCDataset", data_root=str(root), weather="fog", pipeline=PACK))
    victim = ds.get_data_info(0)
    labels = np.array(Image.open(victim["seg_map_path"]))
    labels[0, 0] = 40
    Image.fromarray(labels).save(victim["seg_map_path"])
    skipped = ds[0]["data_samples"].metainfo["skipped_samples"]
    assert {s["key"] for s in skipped} == {victim["key"]} and "[40] outside 0..18/255" in skipped[0]["reason"]


def test_missing_shards_glob(tmp_path):
    with pytest.raises(DataError, match="no shard matches"):
        _build(dict(type="LumenShardDataset", shards=str(tmp_path / "*.tar"), pipeline=LOAD))


def test_unknown_dataset_in_config(city_env, tmp_path):
    from downstream.segformer.train import build_config

    bad = tmp_path / "bad.py"
    bad.write_text(
        f"_base_ = ['{CONFIG_DIR / 'segformer_tiny_procedural-64x128.py'}']\n"
        "train_dataloader = dict(dataset=dict(type='CityscapesLabelIdDataset'))\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"train_dataloader\.dataset\.type = 'CityscapesLabelIdDataset'.*did you mean.*CityscapesLabelIdsDataset",
    ):
        build_config(bad)


def test_mixed_dataset_needs_mixed_sampler(city_env, ref_shards, tmp_path):
    from downstream.segformer.train import build_config

    cfg = build_config(
        CONFIG_DIR / "segformer_tiny_procedural-64x128.py",
        synth=str(ref_shards[0].parent / "*.tar"),
        ratio=0.3,
        work_dir=tmp_path,
    )
    assert cfg.train_dataloader.sampler.type == "MixedSampler"
    assert cfg.train_dataloader.dataset.synth.agreement_ignore is False  # off by default
    on = build_config(
        CONFIG_DIR / "segformer_tiny_procedural-64x128.py",
        synth=str(ref_shards[0].parent / "*.tar"),
        agreement_ignore=True,
        work_dir=tmp_path,
    )
    assert on.train_dataloader.dataset.synth.agreement_ignore is True
    bad = tmp_path / "bad_sampler.py"
    cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=True)
    cfg.dump(str(bad))
    with pytest.raises(ConfigError, match="only MixedSampler honours its ratio"):
        build_config(bad)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_consumed_ratio_matches_request(city_env, ref_shards, tmp_path, ratio):
    """Draw batches through the real dataloader (sampler, workers, collation) and count sources."""
    from mmengine.runner import Runner

    from downstream.segformer.hooks import consumption_report, count_sources
    from downstream.segformer.train import build_config

    cfg = build_config(
        CONFIG_DIR / "segformer_tiny_procedural-64x128.py",
        synth=str(ref_shards[0].parent / "*.tar"),
        ratio=ratio,
        work_dir=tmp_path,
    )
    loader_cfg = cfg.train_dataloader.copy()
    meta_only = [
        dict(type="PackSegInputs", meta_keys=("key", "source"))
    ]  # skip decoding: the mix is the point
    loader_cfg.dataset.real.pipeline = meta_only
    loader_cfg.dataset.synth.pipeline = meta_only
    loader_cfg.update(num_workers=0, persistent_workers=False, batch_size=7)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    counts = None
    for i, batch in enumerate(loader):
        counts = (
            count_sources(batch["data_samples"])
            if counts is None
            else counts + count_sources(batch["data_samples"])
        )
        if i == 70:
            break
    rep = consumption_report(counts, ratio)
    assert rep["total"] == 71 * 7
    assert counts["real"] > 0 and counts["synth"] > 0
    assert rep["abs_error"] < 0.02, rep


def test_a_training_sample_whose_label_is_a_decompression_bomb_is_skipped(write_bad_label_shard, tmp_path):
    """A label PNG whose header claims 40000x40000 pixels is a bad sample (skipped and named),
    not a DecompressionBombError that ends the run."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb_labelIds.png"
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    shard, good, bad = write_bad_label_shard(tmp_path / "bomb" / "shard-000000.tar", bomb)
    ds = _build(dict(type="LumenShardDataset", shards=str(shard), pipeline=PACK))
    keys = [ds.get_data_info(i)["key"] for i in range(len(ds))]
    meta = ds[keys.index(bad)]["data_samples"].metainfo
    assert meta["key"] == good
    assert "too large" in meta["skipped_samples"][0]["reason"]


def test_agreement_ignore_turns_the_judges_disagreements_into_ignore(cs_root, tmp_path):
    """With ``agreement_ignore`` the pixels whose agree.png is 0 become 255 in the training
    labels, the others keep their class; off (the default) the labels are the reused ones; a
    shard without the member is refused when the switch is on."""
    import numpy as np
    from PIL import Image

    from factory.data.cityscapes import list_cityscapes
    from factory.data.labels import id_to_trainid
    from factory.shards import ShardWriter, label_files
    from factory.shards.writer import encode_mask

    ref = list_cityscapes(cs_root, "train").refs[0]
    labelids = np.asarray(Image.open(ref.paths["labelids"]))
    agree = np.ones(labelids.shape, np.uint8)
    agree[:, : labelids.shape[1] // 2] = 0  # the judge disagrees on the left half
    image = np.asarray(Image.open(ref.paths["image"]).convert("RGB"))
    shard = tmp_path / "agree" / "shard-000000.tar"
    w = ShardWriter(shard)
    w.add(
        f"{ref.key}__fog", image, label_files(ref), {"source_key": ref.key}, {"agree.png": encode_mask(agree)}
    )
    w.close()
    plain = tmp_path / "plain" / "shard-000000.tar"
    w = ShardWriter(plain)
    w.add(f"{ref.key}__fog", image, label_files(ref), {"source_key": ref.key})
    w.close()

    expected = id_to_trainid(labelids)
    off = _build(dict(type="LumenShardDataset", shards=str(shard), pipeline=LOAD))[0]["gt_seg_map"]
    on = _build(dict(type="LumenShardDataset", shards=str(shard), pipeline=LOAD, agreement_ignore=True))[0]
    assert np.array_equal(off, expected)
    assert (on["gt_seg_map"][agree == 0] == 255).all()
    assert np.array_equal(on["gt_seg_map"][agree == 1], expected[agree == 1])
    with pytest.raises(DataError, match="no agreement member"):
        _build(dict(type="LumenShardDataset", shards=str(plain), pipeline=LOAD, agreement_ignore=True))
