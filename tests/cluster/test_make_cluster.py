"""`make cluster-up` / `make cluster-down` with real processes: loopback only, and only ours.

The head runs with a temporary CLUSTER_DIR and free ports (Makefile variables given on the
command line). A second, independent Ray (a private ``ray.init(address="local")`` in a child
process) runs beside it the whole time: `make cluster-down` must stop every process of the
cluster and leave that one working (a plain `ray stop` stops both).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from heads import LOOPBACK, RAY, REPO, VENV, free_port, head_env, listening, port_flags, short_temp_dir  # noqa: E402

# The other Ray: starts, says which GCS it runs, then runs one task per line it reads.
OTHER = """
import sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
for _ in sys.stdin:
    print(ray.get(ray.remote(lambda: "alive").remote()), flush=True)
"""

# A job on the cluster: it starts a job driver and workers (their sockets are checked too).
JOB = "import ray; ray.init(); print('job ran on', ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote()))"


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_make_cluster_listens_on_loopback_only_and_cluster_down_stops_only_it(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not found")
    cluster_dir = tmp_path / "cluster"
    temp_dir = short_temp_dir("lr-make-")
    other_tmp = short_temp_dir("lr-other-")
    dashboard = free_port()
    make_vars = [
        f"VENV={VENV}",
        f"CLUSTER_DIR={cluster_dir}",
        f"RAY_PORT={free_port()}",
        f"RAY_DASHBOARD_PORT={dashboard}",
        f"RAY_TEMP_DIR={temp_dir}",
        "RAY_NUM_CPUS=1",
        f"RAY_START_ARGS={' '.join(port_flags())}",
    ]
    # head_env: the two metrics ports that are fixed by default (44217, 44227) get free ones
    env = head_env(cluster_dir / "auth_token")
    other_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH")}
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER],
        env={**other_env, "RAY_TMPDIR": str(other_tmp)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        other_gcs = other.stdout.readline().strip()
        assert other_gcs, "the other Ray did not start"

        # 1. Up, and a job runs on it (workers started: their sockets count too).
        up = subprocess.run(
            ["make", "cluster-up", *make_vars], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert up.returncode == 0, (up.stdout + up.stderr)[-3000:]
        head = json.loads((cluster_dir / "head.json").read_text())
        submit = subprocess.run(
            [str(RAY), "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--", "python", "-c", JOB],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submit.returncode == 0 and "job ran on" in submit.stdout, (submit.stdout + submit.stderr)[
            -3000:
        ]

        # 2. Every socket any process of the cluster listens on is on loopback.
        leader = psutil.Process(head["pid"])
        procs = [leader, *leader.children(recursive=True)]
        sockets = listening(procs)
        assert {port for *_, port in sockets} >= {dashboard}, sockets
        assert len({pid for pid, *_ in sockets}) >= 5, (
            f"too few listening processes to be the cluster: {sockets}"
        )
        exposed = [s for s in sockets if s[2] not in LOOPBACK]
        assert exposed == [], f"listening beyond loopback: {exposed}"

        # 3. Down: the cluster is gone, the other Ray still runs and takes work.
        down = subprocess.run(
            ["make", "cluster-down", *make_vars], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert down.returncode == 0, (down.stdout + down.stderr)[-3000:]
        left = [p for p in procs if _running(p)]
        assert left == [], f"cluster processes still running: {left}"
        assert not (cluster_dir / "head.json").exists()
        assert other.poll() is None, "make cluster-down stopped another Ray's driver"
        other.stdin.write("ping\n")
        other.stdin.flush()
        ready, _, _ = select.select([other.stdout], [], [], 60)
        assert ready and other.stdout.readline().strip() == "alive", "make cluster-down stopped another Ray"
    finally:
        subprocess.run(["make", "cluster-down", *make_vars], cwd=REPO, env=env, capture_output=True)
        if other.poll() is None and other.stdin is not None:
            other.stdin.close()  # the loop ends, the driver exits and its private Ray with it
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, 9)
            other.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(other_tmp, ignore_errors=True)
