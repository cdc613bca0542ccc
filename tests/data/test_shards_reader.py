"""factory.data.shards: our shards (written by the real ShardWriter) listed as SampleRefs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from factory.data.cityscapes import list_cityscapes, load_sample
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.members import MAX_MEMBER_BYTES
from factory.data.sample import DataError
from factory.data.shards import list_shards
from factory.shards import ShardWriter, label_files


def _write_shards(city: Path, folder: Path) -> dict[str, tuple]:
    """shard-000000: two synthetic variants of the first reference; shard-000001: the second
    reference itself (variant "ref"), as downstream's reference shards are. Returns, per key,
    (reference SampleRef, the image written)."""
    refs = list_cityscapes(city / "cityscapes", "train").refs[:2]
    written = {}
    w = ShardWriter(folder / "shard-000000.tar")
    for i, variant in enumerate(("fog", "night")):
        ref = refs[0]
        image = np.clip(load_sample(ref, labels=False).image.astype(int) + 30 * (i + 1), 0, 255).astype(
            np.uint8
        )
        key = f"{ref.key}__{variant}"
        meta = {"source_key": ref.key, "variant": variant, "source": dict(ref.meta)}
        w.add(key, image, label_files(ref), meta)
        written[key] = (ref, image)
    w.close()
    w = ShardWriter(folder / "shard-000001.tar")
    ref = refs[1]
    image = load_sample(ref, labels=False).image
    w.add(
        ref.key, image, label_files(ref), {"source_key": ref.key, "variant": "ref", "source": dict(ref.meta)}
    )
    w.close()
    written[ref.key] = (ref, image)
    return written


def test_listed_shard_samples_load_with_the_references_labels(small_city, tmp_path):
    root = tmp_path / "shards"
    written = _write_shards(small_city, root / "train")
    result = list_samples(DatasetConfig(kind="shards", root=root, split="train"))
    assert [r.key for r in result.refs] == sorted(written) and result.bad == []
    for ref in result.refs:
        src, image = written[ref.key]
        sample = load_sample(ref)
        reference = load_sample(src)
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.semantic, reference.semantic)
        np.testing.assert_array_equal(sample.instance, reference.instance)
        np.testing.assert_array_equal(sample.disparity, reference.disparity)
        assert sample.boxes3d == reference.boxes3d and sample.camera == reference.camera
        for kind in ("labelids", "instanceids", "disparity", "boxes3d", "camera"):
            assert ref.paths[kind].read_bytes() == src.paths[kind].read_bytes()  # byte for byte
        assert ref.meta["dataset"] == "shards" and ref.meta["split"] == "train"
        assert ref.meta["source_key"] == src.key and ref.meta["city"] == src.meta["city"]
        assert ref.meta["shard"].endswith(".tar")
    weathers = {r.key: r.meta["weather"] for r in result.refs}
    assert sorted(weathers.values()) == ["clear", "fog", "night"]


def test_a_reference_keeps_its_recorded_weather_also_under_the_old_field_name(tmp_path):
    """A real reference's weather comes from its ``source``; shards written before the rename
    record it as ``source.condition``, and are read the same."""
    w = ShardWriter(tmp_path / "shard-000000.tar")
    image = np.zeros((8, 16, 3), np.uint8)
    w.add("new", image, {}, {"source_key": "new", "variant": "ref", "source": {"weather": "rain"}})
    w.add("old", image, {}, {"source_key": "old", "variant": "ref", "source": {"condition": "snow"}})
    w.add("none", image, {}, {"source_key": "none", "variant": "ref"})
    w.close()
    refs = {r.key: r.meta for r in list_shards(tmp_path, "train").refs}
    assert {k: m["weather"] for k, m in refs.items()} == {"new": "rain", "old": "snow", "none": "clear"}
    assert not [m for m in refs.values() if "condition" in m]


def test_extraction_is_reused_and_renewed_when_a_shard_is_rewritten(small_city, tmp_path):
    root = tmp_path / "shards"
    _write_shards(small_city, root)  # no split folder: the shards lie in root itself
    first = list_shards(root, "train")
    again = list_shards(root, "train")
    assert [r.paths for r in first.refs] == [r.paths for r in again.refs]
    extracted = sorted(p.name for p in (root / ".extracted").iterdir())
    assert len(extracted) == 2 and not [n for n in extracted if ".tmp-" in n]

    old = first.refs[-1].paths["image"].parent
    w = ShardWriter(root / "shard-000001.tar")  # a rerun rewrites shard 1 with other pixels
    key = first.refs[-1].key
    w.add(key, np.zeros((64, 128, 3), np.uint8), {}, {"source_key": key, "variant": "ref"})
    w.close()
    renewed = {r.key: r for r in list_shards(root, "train").refs}
    assert renewed[key].paths["image"].parent != old and not old.exists()
    assert load_sample(renewed[key], labels=False).image.max() == 0


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda b: b"x" * 100 + b[100:], "not a readable tar shard"),  # a damaged header
        (lambda b: b[: len(b) // 2 // 512 * 512], "truncated tar"),
        (lambda b: b[: len(b) // 2 + 7], "truncated tar"),
    ],
)
def test_a_corrupt_shard_is_a_data_error_naming_it_or_skipped(small_city, tmp_path, damage, problem):
    root = tmp_path / "shards"
    written = _write_shards(small_city, root)
    bad = root / "shard-000000.tar"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match=problem) as err:
        list_shards(root, "train")
    assert err.value.path == bad
    result = list_shards(root, "train", on_error="skip")
    assert [r.key for r in result.refs] == [k for k in sorted(written) if "__" not in k]
    assert [b.path for b in result.bad] == [bad] and problem in result.bad[0].reason
    assert not [p for p in (root / ".extracted").iterdir() if p.name.startswith("shard-000000")]


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_compressed_shard_is_refused_before_it_is_inflated(small_city, tmp_path, hostile_shard):
    """A gzip named .tar, padded so that it ends like a tar: webdataset inflated it whole (here a
    32 MiB member from a ~33 KB file). Refused by its magic bytes, nothing extracted."""
    root = tmp_path / "shards"
    written = _write_shards(small_city, root)
    bad = root / "shard-000000.tar"
    bomb = _tar_bytes({"bomb.png": bytes(32 * 2**20), "bomb.json": b"{}"})
    hostile_shard.gzip(bomb, bad)
    assert bad.stat().st_size < 100_000
    with pytest.raises(DataError, match="gzip-compressed data named like a tar") as err:
        list_shards(root, "train")
    assert err.value.path == bad and "decompress it" in str(err.value)
    assert not [
        p for p in (root / ".extracted").glob("*") if p.name.startswith(("shard-000000", ".shard-000000"))
    ]
    skipped = list_shards(root, "train", on_error="skip")
    assert [b.path for b in skipped.bad] == [bad]
    assert [r.key for r in skipped.refs] == [k for k in sorted(written) if "__" not in k]


def test_a_member_above_the_size_limit_is_refused_before_it_is_read(small_city, tmp_path, hostile_shard):
    """A tar member's header states its size: one above ``max_member_bytes`` (64 MiB by default)
    is refused from the header, before webdataset would read it whole into memory."""
    root = tmp_path / "shards"
    _write_shards(small_city, root)
    bad = hostile_shard.sparse(root / "shard-000002.tar", "huge", MAX_MEMBER_BYTES + 1)
    limit = (
        rf"member 'huge.png' declares {MAX_MEMBER_BYTES + 1} bytes, above the {MAX_MEMBER_BYTES}-byte limit"
    )
    with pytest.raises(DataError, match=limit) as err:
        list_shards(root, "train")
    assert err.value.path == bad and "raise max_member_bytes" in str(err.value)
    bad.unlink()
    with pytest.raises(DataError, match="above the 100-byte limit"):  # the limit is a knob
        list_shards(root, "train", cache=tmp_path / "other_cache", max_member_bytes=100)
    assert len(list_shards(root, "train").refs) == 3


def test_a_file_that_is_no_tar_at_all_is_refused_by_name(small_city, tmp_path):
    root = tmp_path / "shards"
    _write_shards(small_city, root)
    bad = root / "shard-000000.tar"
    bad.write_bytes(b"PK\x03\x04" + bytes(10236))  # a zip's magic, whole tar blocks, zero tail
    with pytest.raises(DataError, match="not a ustar tar") as err:
        list_shards(root, "train")
    assert err.value.path == bad


def test_a_tar_whose_first_name_starts_like_a_compression_magic_is_still_a_tar(tmp_path):
    """The ustar magic decides: a key beginning 'BZh9' (bzip2's magic) is a plain tar's name."""
    w = ShardWriter(tmp_path / "shard-000000.tar")
    w.add("BZh91AY", np.zeros((8, 16, 3), np.uint8), {}, {"source_key": "BZh91AY", "variant": "ref"})
    w.close()
    assert [r.key for r in list_shards(tmp_path, "train").refs] == ["BZh91AY"]


def test_a_sample_without_image_or_a_duplicate_key_is_a_data_error(small_city, tmp_path):
    root = tmp_path / "shards"
    _write_shards(small_city, root)
    w = ShardWriter(root / "shard-000002.tar")
    w.add_members("layout_only", {"layout.npy": b"\x00" * 8, "json": b"{}"})
    w.close()
    with pytest.raises(DataError, match="'layout_only' lacks image"):
        list_shards(root, "train")
    (root / "shard-000002.tar").unlink()

    key = list_shards(root, "train").refs[0].key
    w = ShardWriter(root / "shard-000003.tar")
    w.add(key, np.zeros((64, 128, 3), np.uint8), {}, {"variant": "fog"})
    w.close()
    with pytest.raises(DataError, match=f"{key}' is also in .*shard-000000.tar") as err:
        list_shards(root, "train")
    assert err.value.path == root / "shard-000003.tar"
    skipped = list_shards(root, "train", on_error="skip")
    assert len(skipped.refs) == 3 and [b.path for b in skipped.bad] == [root / "shard-000003.tar"]


def test_an_empty_or_missing_folder_says_what_to_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_shards(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        list_shards(tmp_path / "empty", "train")


def test_a_job_can_plan_from_shards(small_city, tmp_path):
    """The Ray jobs list their references through the same DatasetConfig: kind=shards works there."""
    from factory.jobs.plan import list_references

    root = tmp_path / "shards"
    written = _write_shards(small_city, root / "train")
    refs = list_references(DatasetConfig(kind="shards", root=root, split="train", limit=2))
    assert [r.key for r in refs] == sorted(written)[:2]
    assert all(r.paths["labelids"].is_file() for r in refs)


def test_a_synthetic_image_smaller_than_its_labels_loads(small_city, tmp_path):
    """DESIGN.md: generated at half size, labels at full size - both sizes in the metadata."""
    ref = list_cityscapes(small_city / "cityscapes", "train").refs[0]
    full = load_sample(ref)
    h, w = full.size
    small = np.ascontiguousarray(full.image[::2, ::2])
    folder = tmp_path / "shards" / "train"
    writer = ShardWriter(folder / "shard-000000.tar")
    meta = {"source_key": ref.key, "variant": "fog", "image_size": [h // 2, w // 2], "label_size": [h, w]}
    writer.add(f"{ref.key}__fog", small, label_files(ref), meta)
    lying = {**meta, "image_size": [h, w]}  # metadata that does not match the image
    writer.add(f"{ref.key}__night", small, label_files(ref), lying)
    writer.close()
    refs = {r.key: r for r in list_shards(tmp_path / "shards", "train").refs}
    sample = load_sample(refs[f"{ref.key}__fog"])
    assert sample.size == (h // 2, w // 2) and sample.label_size == (h, w)
    np.testing.assert_array_equal(sample.semantic, full.semantic)
    with pytest.raises(DataError, match="metadata records image_size"):
        load_sample(refs[f"{ref.key}__night"])
    # without the recorded sizes, a size mismatch is still an error
    del refs[f"{ref.key}__fog"].meta["label_size"]
    with pytest.raises(DataError, match="differs from the image"):
        load_sample(refs[f"{ref.key}__fog"])
