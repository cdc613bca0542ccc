"""``init_ray`` without an address starts a private Ray, whatever other Ray the machine holds.

Ray's own default (``ray.init()`` with no address) attaches to the cluster that ``ray start``
last recorded in ``<Ray temp dir>/ray_current_cluster`` - a live one, or a dead one whose file
stayed behind - and then refuses the ``num_cpus`` an in-process job passes. Each test points
Ray's default temp dir (RAY_TMPDIR) at a folder of its own, puts a live head or a stale address
file there, and runs ``init_ray`` in a child process with that environment (a child, because
this test session may hold a Ray of its own already).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from heads import REPO, free_port, head_env, local_head, port_flags, short_temp_dir  # noqa: E402

# What the child reports: which Ray it is on (its GCS), that Ray's CPUs and live nodes, and
# that a task runs there.
CHILD = """
import json, ray
from factory.jobs.executors import RayConfig, init_ray
init_ray(RayConfig(local_cpus=1))
report = {
    "gcs": ray.get_runtime_context().gcs_address,
    "cpus": ray.cluster_resources().get("CPU"),
    "nodes": sum(n["Alive"] for n in ray.nodes()),
    "task": ray.get(ray.remote(lambda: 41 + 1).remote()),
}
print("REPORT " + json.dumps(report))
"""


def run_init_ray(env: dict[str, str]) -> dict:
    """``init_ray(RayConfig(local_cpus=1))`` in a child process; what it reports."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def child_env(ray_tmpdir: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no RAY_ADDRESS, no token settings, Ray's default temp dir in ``ray_tmpdir``,
    the code under test first on the path (the child and its Ray workers)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH")}
    return {**env, "RAY_TMPDIR": str(ray_tmpdir), "PYTHONPATH": str(REPO), **extra}


def test_a_stale_address_file_is_ignored():
    """A `ray start` cluster that died without `ray stop` leaves its address behind."""
    base = short_temp_dir("lr-stale-")
    try:
        (base / "ray").mkdir()
        (base / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        report = run_init_ray(child_env(base))
        assert report["cpus"] == 1 and report["nodes"] == 1 and report["task"] == 42
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_a_running_cluster_is_not_joined_unless_named(tmp_path):
    """With a `ray start --head` cluster recorded where Ray looks, ``init_ray()`` still starts its
    own Ray (another GCS, its own CPU count) and the cluster is left as it was; given the
    cluster's address (RAY_ADDRESS), ``init_ray`` connects to it."""
    base = short_temp_dir("lr-init-")
    cluster_dir = tmp_path / "cluster"
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    flags = [
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={free_port()}",
        f"--dashboard-port={free_port()}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        *port_flags(),
    ]
    try:
        head = local_head.start(cluster_dir, base / "ray", flags, env=head_env(token, RAY_TMPDIR=str(base)))
        cluster_gcs = (base / "ray" / "ray_current_cluster").read_text().strip()

        private = run_init_ray(child_env(base))
        assert private["gcs"] != cluster_gcs
        assert private["cpus"] == 1 and private["nodes"] == 1 and private["task"] == 42

        # A driver outside the head reaches a loopback-only cluster as one-machine Ray too (else
        # Ray rewrites the 127.0.0.1 of the address to the machine's routable IP, where nothing
        # listens); the token is the cluster's.
        joined = run_init_ray(
            child_env(
                base,
                RAY_ADDRESS=cluster_gcs,
                RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN_PATH=str(token),
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            )
        )
        assert joined["gcs"] == cluster_gcs
        assert joined["cpus"] == 2 and joined["nodes"] == 1 and joined["task"] == 42
        assert head.process() is not None, "the cluster went down"
    finally:
        local_head.stop(cluster_dir)
        shutil.rmtree(base, ignore_errors=True)
