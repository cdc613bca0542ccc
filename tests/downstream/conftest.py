"""Fixtures for downstream tests: the procedural city, reference shards, config helpers, and a
planted (code-running) checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mmseg", reason="mmsegmentation (with mmcv ops) is installed by `make setup`")

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "downstream"
TINY = CONFIG_DIR / "segformer_tiny_procedural-64x128.py"


@pytest.fixture(scope="session")
def cs_root(city_root: Path) -> Path:
    return city_root / "cityscapes"


@pytest.fixture(scope="session")
def acdc_root(city_root: Path) -> Path:
    return city_root / "acdc"


@pytest.fixture(scope="session")
def ref_shards(cs_root: Path, tmp_path_factory) -> list[Path]:
    """The city's train references in shards, images stored at half the label size."""
    from downstream.segformer.make_shards import write_reference_shards

    return write_reference_shards(cs_root, tmp_path_factory.mktemp("shards"), per_shard=4, downscale=2)


@pytest.fixture
def city_env(city_root: Path, monkeypatch) -> Path:
    """Point every config's data roots at the test city (configs read these at load time)."""
    monkeypatch.setenv("CITY_ROOT", str(city_root))
    monkeypatch.setenv("CITYSCAPES_DATASET", str(city_root / "cityscapes"))
    monkeypatch.setenv("ACDC_DATASET", str(city_root / "acdc"))
    return city_root


class _WritesMarker:
    """Pickles as a call that writes ``marker``: what a planted checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture
def planted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(``tmp_path/iter_4.pth``, marker): an mmengine-shaped checkpoint whose pickle writes the
    marker file if it is ever unpickled - the marker existing means the planted code ran."""
    import torch

    marker = tmp_path / "marker"
    path = tmp_path / "iter_4.pth"
    torch.save({"meta": {"iter": 4}, "state_dict": {}, "message_hub": _WritesMarker(marker)}, path)
    return path, marker


def _record_in_manifest(shard: Path) -> Path:
    """Write ``shard``'s manifest part beside its folder (``<out>/manifest/<name>.parquet``) as
    the generation job does: one ok row per sample in the tar, plus a rejected earlier attempt."""
    import tarfile

    from factory.shards import Manifest, ManifestRow

    with tarfile.open(shard) as tar:
        keys = sorted({Path(m.name).name.split(".")[0] for m in tar})
    rows = [ManifestRow(k, k.split("__")[0], "fog", shard.stem, "ok", attempt=1) for k in keys]
    rows.append(ManifestRow(keys[0], keys[0].split("__")[0], "fog", shard.stem, "rejected", "low score"))
    return Manifest(shard.parent.parent / "manifest").write_part(shard.stem, rows)


def _cut_last_sample(shard: Path, end_marker: bool = True) -> str:
    """Cut ``shard`` at the first member of its last sample (a member boundary); with
    ``end_marker`` append the end-of-archive blocks, so what is left is a valid, shorter tar.
    Returns the key of the sample cut off."""
    import tarfile

    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    last = Path(members[-1].name).name.split(".")[0]
    cut = next(m.offset for m in members if Path(m.name).name.split(".")[0] == last)
    data = shard.read_bytes()[:cut]
    shard.write_bytes(data + (b"\0" * 1024 if end_marker else b""))
    return last


@pytest.fixture
def job_record():
    """The generation job's bookkeeping around shards a test wrote: ``record(shard)`` writes its
    manifest part; ``cut(shard, end_marker=True)`` drops its last sample at a member boundary."""
    from types import SimpleNamespace

    return SimpleNamespace(record=_record_in_manifest, cut=_cut_last_sample)


def shard_with_bad_label(cs_root: Path, shard: Path, bad_labelids: Path) -> tuple[Path, str, str]:
    """(shard, good key, bad key): two references' fog samples written to ``shard``, the second
    one's labelIds member replaced by the file ``bad_labelids``."""
    import numpy as np
    from PIL import Image

    from factory.data.cityscapes import list_cityscapes
    from factory.shards import ShardWriter, label_files

    refs = list_cityscapes(cs_root, "train").refs[:2]
    w = ShardWriter(shard)
    for ref in refs:
        files = label_files(ref)
        if ref is refs[1]:
            files["labelids.png"] = bad_labelids
        image = np.asarray(Image.open(ref.paths["image"]).convert("RGB"))
        w.add(f"{ref.key}__fog", image, files, {"source_key": ref.key, "variant": "fog"})
    w.close()
    return shard, f"{refs[0].key}__fog", f"{refs[1].key}__fog"


@pytest.fixture
def bad_label_shard(cs_root: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """(shard, good key, bad key): the bad sample's labelIds map holds 250 in a corner (no
    Cityscapes labelId: the kind of sample that stopped training when drawn)."""
    import numpy as np
    from PIL import Image

    from factory.data.cityscapes import list_cityscapes

    ref = list_cityscapes(cs_root, "train").refs[1]
    labels = np.array(Image.open(ref.paths["labelids"]))
    labels[:4, :4] = 250
    broken = tmp_path / "broken_labelIds.png"
    Image.fromarray(labels).save(broken)
    return shard_with_bad_label(cs_root, tmp_path / "bad_labels" / "shard-000000.tar", broken)


@pytest.fixture
def write_bad_label_shard(cs_root: Path):
    """``shard_with_bad_label`` for the tests' own bad label files: ``f(shard, bad_labelids)``."""
    return lambda shard, bad_labelids: shard_with_bad_label(cs_root, shard, bad_labelids)


@pytest.fixture(scope="session", autouse=True)
def _mmseg_scope():
    from mmengine.registry import init_default_scope

    import downstream.segformer.register  # noqa: F401

    init_default_scope("mmseg")
