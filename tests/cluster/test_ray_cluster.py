"""Against a real local cluster: `ray start --head`, then the real `ray job submit` CLI.

Ray 2.60 enables token authentication for clusters it starts. The test pins it explicitly
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<a fresh token file>) for both `ray start` and
`ray job submit`, exactly as the Makefile's cluster targets do; the job driver inherits both
from the head. Like `make cluster-up`, the head listens on 127.0.0.1 only (a one-machine Ray:
tests/cluster/heads.py). The head runs with `--block` under this test's control and is stopped
by terminating that process (which shuts its own Ray processes down): `ray stop` would stop
every Ray instance on the machine, including other test sessions'.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from factory.data.sample import check_key
from factory.shards import Manifest, read_shard_samples

sys.path.insert(0, str(Path(__file__).parent))
from heads import RAY, REPO, free_port, head_env  # noqa: E402


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_procedural_job_through_ray_job_submit(city_root, tmp_path):
    if not RAY.exists():
        pytest.skip(f"{RAY} not found (run `make setup`)")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    temp_dir = Path(tempfile.mkdtemp(prefix="lr-", dir="/tmp"))  # short: Ray's unix sockets
    env = head_env(token)
    port, dash = free_port(), free_port()
    ports = {
        "--port": port,
        "--dashboard-port": dash,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=true",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", *[f"{k}={v}" for k, v in ports.items()]],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    out = tmp_path / "out"
    try:
        # 1. Wait until the job server answers (with the token: `ray job list`).
        deadline = time.time() + 120
        while True:
            probe = subprocess.run(
                [str(RAY), "job", "list", f"--address={address}"], env=env, capture_output=True, text=True
            )
            if probe.returncode == 0:
                break
            assert head.poll() is None, f"ray start failed:\n{head.stdout.read()}"
            assert time.time() < deadline, f"job server never came up:\n{probe.stderr[-2000:]}"
            time.sleep(2)
        # Without the token the job server refuses us: token auth really is on.
        no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        no_token["RAY_AUTH_MODE"] = "disabled"
        refused = subprocess.run(
            [str(RAY), "job", "list", f"--address={address}"], env=no_token, capture_output=True, text=True
        )
        assert refused.returncode != 0

        # 2. Submit the procedural-city job with the real CLI and wait for it.
        submit = subprocess.run(
            [
                str(RAY), "job", "submit", f"--address={address}", "--working-dir", ".",
                "--runtime-env", "cluster/runtime_env.yaml", "--",
                "python", "-m", "factory.jobs.generate", "--config", "configs/generate/procedural.yaml",
                f"out={out}", f"dataset.root={city_root / 'cityscapes'}", "dataset.limit=2",
                "variants.sets=[fog, night]", "samples_per_shard=2", "ray.num_actors=2",
                "synthesizer=tests/jobs/doubles.py:build", "progress=false",
            ],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        job_id = re.search(r"(raysubmit_\w+)", log).group(1)
        status = subprocess.run(
            [str(RAY), "job", "status", f"--address={address}", job_id],
            env=env,
            capture_output=True,
            text=True,
        )
        plain = re.sub(r"\x1b\[[0-9;]*m", "", status.stdout + status.stderr)
        assert re.search(r"SUCCEEDED|succeeded", plain), plain

        # 3. The shards it wrote.
        shards = sorted((out / "shards").glob("*.tar"))
        assert len(shards) == 2
        samples = list(read_shard_samples(shards))
        assert len(samples) == 4 and all(check_key(s["__key__"]) for s in samples)
        assert {r["status"] for r in Manifest(out / "manifest").rows()} == {"ok"}
        assert json.loads((out / "card.json").read_text())["samples"]["accepted"] == 4
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
