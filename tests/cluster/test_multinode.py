"""The generation job on a two-node Ray cluster that loses a node mid-job.

Ray's own multi-node harness (``ray.cluster_utils.Cluster``) starts a head and a worker node on
this machine, each with one CPU, so the job's two actors land one per node. Once the first
shard is committed the worker node is removed without grace (node loss); a fresh node joins, as
an autoscaler would replace it. The job must replace the lost actor, redo the shards it held,
and end with exactly one sample per (reference, variant), byte-identical to an in-process run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from factory.jobs.generate import run
from factory.shards import Manifest, read_shard_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from jobcfg import REPO, make_cfg, shard_bytes  # noqa: E402


def scenario(city_root: Path, tmp_path: Path) -> None:
    """The whole scenario (run in its own process: Ray's multi-node harness owns the driver's Ray)."""
    import ray
    from ray.cluster_utils import Cluster

    baseline = tmp_path / "baseline"
    run(make_cfg(city_root, baseline, "executor=in_process", limit=4))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        out = tmp_path / "out"
        cfg = make_cfg(
            city_root, out, "faults.delay_s=1.0", "ray.num_actors=2", "ray.cpus_per_actor=1", limit=4
        )
        result: dict = {}

        def job() -> None:
            try:
                result["summary"] = run(cfg)
            except BaseException as e:  # surfaced by the assert below
                result["error"] = e

        thread = threading.Thread(target=job)
        thread.start()
        manifest = Manifest(out / "manifest")
        deadline = time.time() + 180
        while time.time() < deadline and not manifest.done_shards() and thread.is_alive():
            time.sleep(0.2)
        assert manifest.done_shards(), result.get("error")
        cluster.remove_node(worker, allow_graceful=False)  # node loss, mid-job
        cluster.add_node(num_cpus=1)  # the replacement capacity an autoscaler would add
        thread.join(timeout=300)
        assert not thread.is_alive(), "the job did not finish after the node was lost"
        assert "error" not in result, result.get("error")
        summary = result["summary"]
        assert summary.actors_died == 1 and summary.reassigned, summary  # the lost node held an actor
        keys = [s["__key__"] for s in read_shard_samples(sorted((out / "shards").glob("*.tar")))]
        assert len(keys) == 8 and Counter(keys).most_common(1)[0][1] == 1, keys
        assert shard_bytes(out) == shard_bytes(baseline)
        assert {r["key"] for r in manifest.rows() if r["status"] == "ok"} == set(keys)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_a_node_lost_mid_job_leaves_exactly_one_sample_per_key(city_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, __file__, str(city_root), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


if __name__ == "__main__":
    scenario(Path(sys.argv[1]), Path(sys.argv[2]))
