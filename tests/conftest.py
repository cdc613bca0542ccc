"""Shared fixtures: the procedural city (generated once per session) and one local Ray instance.

No test may reach the network: hub access is switched off for the whole run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def city_root(tmp_path_factory) -> Path:
    """A small procedural city (64x128) in the official Cityscapes and ACDC folder layouts."""
    from factory.data.procedural import generate_city

    root = tmp_path_factory.mktemp("city")
    generate_city(root, n_train=6, n_val=4, n_acdc=3, height=64, width=128, seed=0)
    return root


@pytest.fixture(scope="session")
def ray_local() -> str:
    """One in-process local Ray instance shared by every test that needs Ray; yields the
    dashboard address.

    The dashboard runs (on a free port, so parallel sessions do not meet) because Ray's state
    API (``ray.util.state.list_actors``, used to find an actor's process to kill) is served by it.
    ``address="local"``: a new instance even when a ``ray start`` cluster runs on the machine (Ray
    would attach to it otherwise, and refuse ``num_cpus``), as ``init_ray`` does for jobs.
    """
    import socket

    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=dashboard_port,
        log_to_driver=False,
        configure_logging=False,
    )
    yield f"http://{context.dashboard_url}"
    ray.shutdown()


def _tar_header(name: str, size: int) -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


@pytest.fixture
def hostile_shard():
    """Makers of shard files that must be refused before they are inflated or read:

    - ``gzip(plain, path)``: ``plain`` tar bytes gzipped and padded with zeros to whole tar
      blocks ending in an end-of-archive marker (gzip readers ignore zero padding), written to
      ``path`` - a compressed file that passes the end-marker check;
    - ``sparse(path, key, size)``: a valid tar whose ``<key>.png`` declares ``size`` bytes (a
      sparse hole on disk, zeros when read) beside a small ``<key>.json``.
    """
    import gzip
    from types import SimpleNamespace

    def make_gzip(plain: bytes, path: Path) -> Path:
        data = gzip.compress(plain)
        data += b"\0" * (-len(data) % 512 + 1024)
        path.write_bytes(data)
        return path

    def make_sparse(path: Path, key: str, size: int) -> Path:
        with open(path, "wb") as f:
            f.write(_tar_header(f"{key}.png", size))
            f.seek(f.tell() + (size + 511) // 512 * 512)  # a hole: the member's data
            f.write(_tar_header(f"{key}.json", 2) + b"{}".ljust(512, b"\0"))
            f.write(b"\0" * 1024)  # end-of-archive marker
        return path

    return SimpleNamespace(gzip=make_gzip, sparse=make_sparse)
