"""ShardWriter and Manifest: stock webdataset reads our shards, labels are the reference's bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from factory.atomic import sha256
from factory.config import ConfigError, from_dict
from factory.data.sample import SampleRef
from factory.shards import (
    Manifest,
    ManifestRow,
    ShardConfig,
    ShardWriter,
    label_files,
    read_shard_samples,
    remove_stale_temporaries,
)


def _reference(tmp: Path, key: str, seed: int) -> SampleRef:
    rng = np.random.default_rng(seed)
    paths = {}
    img = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    paths["image"] = tmp / f"{key}_leftImg8bit.png"
    cv2.imwrite(str(paths["image"]), img)
    paths["labelids"] = tmp / f"{key}_labelIds.png"
    cv2.imwrite(str(paths["labelids"]), rng.integers(0, 34, (8, 16), dtype=np.uint8))
    paths["disparity"] = tmp / f"{key}_disparity.png"
    cv2.imwrite(str(paths["disparity"]), rng.integers(0, 60000, (8, 16), dtype=np.uint16))
    paths["boxes3d"] = tmp / f"{key}_gtBbox3d.json"
    paths["boxes3d"].write_text(json.dumps({"objects": [], "seed": seed}))
    return SampleRef(key, paths, {"dataset": "cityscapes"})


def _write(path: Path, refs: list[SampleRef], cfg: ShardConfig | None = None):
    writer = ShardWriter(path, cfg)
    for i, ref in enumerate(refs):
        image = np.full((8, 16, 3), 10 * i, dtype=np.uint8)
        writer.add(f"{ref.key}__fog", image, label_files(ref), {"source_key": ref.key, "i": i})
    return writer.close()


def test_stock_webdataset_reads_shard_and_labels_are_byte_identical(tmp_path):
    refs = [_reference(tmp_path, f"city_00000{i}_000019", i) for i in range(3)]
    shard = tmp_path / "out" / "shard-000000.tar"
    written = _write(shard, refs)
    assert shard.is_file()
    assert not [p for p in shard.parent.iterdir() if ".tmp-" in p.name]

    samples = list(read_shard_samples([shard]))
    assert [s["__key__"] for s in samples] == [f"{r.key}__fog" for r in refs]
    for s, ref, w in zip(samples, refs, written):
        assert s["labelids.png"] == ref.paths["labelids"].read_bytes()
        assert s["disparity.png"] == ref.paths["disparity"].read_bytes()
        assert s["boxes3d.json"] == ref.paths["boxes3d"].read_bytes()
        assert "instanceids.png" not in s  # the reference has none
        image = cv2.imdecode(np.frombuffer(s["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (8, 16, 3)
        assert json.loads(s["json"])["source_key"] == ref.key
        assert w.checksums == {k: sha256(v) for k, v in s.items() if not k.startswith("__")}


def test_same_samples_give_byte_identical_shards(tmp_path):
    refs = [_reference(tmp_path, f"city_00000{i}_000019", i) for i in range(2)]
    a, b = tmp_path / "a" / "s.tar", tmp_path / "b" / "s.tar"
    _write(a, refs)
    _write(b, refs)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_other_image_formats(tmp_path, fmt):
    refs = [_reference(tmp_path, "city_000000_000019", 0)]
    shard = tmp_path / "s.tar"
    _write(shard, refs, ShardConfig(image_format=fmt))
    (sample,) = read_shard_samples([shard])
    assert fmt in sample and "png" not in sample
    assert cv2.imdecode(np.frombuffer(sample[fmt], np.uint8), cv2.IMREAD_COLOR).shape == (8, 16, 3)


def test_writer_rejects_unsafe_and_duplicate_keys(tmp_path):
    writer = ShardWriter(tmp_path / "s.tar")
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unsafe"):
        writer.add("a.b", img, {}, {})
    with pytest.raises(ValueError, match="unsafe"):
        writer.add("../x", img, {}, {})
    writer.add("ok", img, {}, {})
    with pytest.raises(ValueError, match="duplicate"):
        writer.add("ok", img, {}, {})


def test_missing_label_file_names_the_file(tmp_path):
    ref = _reference(tmp_path, "city_000000_000019", 0)
    ref.paths["labelids"].unlink()
    with pytest.raises(ValueError, match="labelIds.png"):
        label_files(ref)


def test_failed_write_leaves_no_shard(tmp_path):
    writer = ShardWriter(tmp_path / "s.tar")
    writer.add("k", np.zeros((4, 4), np.uint8), {}, {})  # not HxWx3: encoding fails
    with pytest.raises(ValueError, match="HxWx3"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".shard-000001.tar.tmp-123").write_bytes(b"partial")
    (tmp_path / ".tmp-part-000001.parquet.123").write_bytes(b"partial")  # factory.atomic's temporary
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".shard-000001.tar.tmp-123", ".tmp-part-000001.parquet.123"]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-000000.tar"]


def test_manifest_parts_roundtrip_and_done_keys(tmp_path):
    m = Manifest(tmp_path / "manifest")
    assert m.done_keys() == set() and m.read().num_rows == 0
    m.write_part(
        "shard-000000",
        [
            ManifestRow("a__fog", "a", "fog", "shard-000000", "ok", seed=1, checksums={"png": "x"}),
            ManifestRow("b__fog", "b", "fog", "shard-000000", "rejected", reason="constant image", attempt=0),
            ManifestRow(
                "b__fog", "b", "fog", "shard-000000", "ok", seed=2, attempt=1, timings={"synth_s": 0.5}
            ),
        ],
    )
    m.write_part(
        "shard-000001", [ManifestRow("c__fog", "c", "fog", "shard-000001", "failed", reason="corrupt")]
    )
    assert m.done_shards() == {"shard-000000", "shard-000001"}
    assert m.done_keys() == {"a__fog", "b__fog", "c__fog"}
    assert m.accepted_keys() == {"a__fog", "b__fog"}
    rows = m.rows()
    assert len(rows) == 4
    assert rows[2]["timings"] == {"synth_s": 0.5} and rows[0]["checksums"] == {"png": "x"}
    # rewriting a shard's part replaces it (a redone shard has one set of rows)
    m.write_part("shard-000001", [ManifestRow("c__fog", "c", "fog", "shard-000001", "ok")])
    assert m.accepted_keys() == {"a__fog", "b__fog", "c__fog"} and len(m.rows()) == 4
    assert not [p for p in os.listdir(m.folder) if ".tmp-" in p]


def test_manifest_row_validation(tmp_path):
    with pytest.raises(ValueError, match="unsafe"):
        ManifestRow("a.b", "a", "fog", "s", "ok")
    with pytest.raises(ValueError, match="status"):
        ManifestRow("a", "a", "fog", "s", "done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard"):
        Manifest(tmp_path / "m").write_part("s1", [ManifestRow("a", "a", "fog", "s2", "ok")])
    assert not (tmp_path / "m").exists()


def test_shard_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="image_format"):
        from_dict(ShardConfig, {"image_format": "gif"})
    with pytest.raises(ConfigError, match="jpeg_quality"):
        from_dict(ShardConfig, {"jpeg_quality": 0})
