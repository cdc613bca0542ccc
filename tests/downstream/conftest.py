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


@pytest.fixture(scope="session", autouse=True)
def _mmseg_scope():
    from mmengine.registry import init_default_scope

    import downstream.segformer.register  # noqa: F401

    init_default_scope("mmseg")
