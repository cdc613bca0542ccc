"""One stage, three executors: the same config gives the same shards whichever runs it.

The generation job (test-double synthesizer) runs in-process, on a Ray actor pool and under Ray
Data; shard bytes and the manifest's sample sets must be identical. A run killed mid-way and
resumed with another executor still ends with exactly one sample per (reference, variant).
A stage whose setup raises stops every executor at once with that error.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from factory.jobs.executors import run_in_process
from factory.jobs.generate import run
from factory.jobs.stage import Resources, ShardTask
from factory.shards import Manifest

sys.path.insert(0, str(Path(__file__).parent))
from jobcfg import REPO, kill_driver_after_first_shard, make_cfg, shard_bytes  # noqa: E402

MISSING_MODEL = f"synthesizer={REPO / 'tests' / 'jobs' / 'doubles.py'}:build_missing_model"


def sample_sets(out: Path) -> dict[str, set[str]]:
    """Manifest keys by status (independent of row order and run ids)."""
    by: dict[str, set[str]] = {}
    for r in Manifest(out / "manifest").rows():
        by.setdefault(r["status"], set()).add(r["key"])
    return by


@pytest.fixture(scope="module")
def in_process_run(city_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("in_process")
    summary = run(make_cfg(city_root, out, "executor=in_process"))
    return out, summary


def test_in_process_executor_runs_without_ray(in_process_run):
    out, summary = in_process_run
    assert summary.card["accounting"]["kind"] == "in_process"
    assert summary.counts == {"ok": 6} and summary.shards_total == 3
    assert len(shard_bytes(out)) == 3


@pytest.mark.parametrize("executor", ["actor_pool", "ray_data"])
def test_every_executor_writes_the_same_shards(in_process_run, city_root, ray_local, tmp_path, executor):
    out = tmp_path / executor
    summary = run(make_cfg(city_root, out, f"executor={executor}"))
    assert summary.counts == {"ok": 6}
    assert shard_bytes(out) == shard_bytes(in_process_run[0])
    assert sample_sets(out) == sample_sets(in_process_run[0])


def test_a_run_killed_on_one_executor_resumes_on_another(in_process_run, city_root, tmp_path):
    """Kill the driver (actor pool) after its first shard; finish with Ray Data; then a rerun
    in-process finds everything done. Exactly one sample per key, bytes as uninterrupted."""
    out = tmp_path / "out"
    finished = kill_driver_after_first_shard(city_root, out, tmp_path)
    manifest = Manifest(out / "manifest")

    resumed = run(make_cfg(city_root, out, "executor=ray_data", "ray.local_cpus=2"))
    assert set(resumed.shards_done) == {"shard-000000", "shard-000001", "shard-000002"} - finished
    again = run(make_cfg(city_root, out, "executor=in_process"))
    assert again.shards_skipped == 3 and again.shards_done == []
    accepted = Counter(r["key"] for r in manifest.rows() if r["status"] == "ok")
    assert len(accepted) == 6 and set(accepted.values()) == {1}
    assert shard_bytes(out) == shard_bytes(in_process_run[0])


def _setup_attempts(out: Path) -> list[tuple[int, float]]:
    """(process id, time) of every setup attempt of the missing-model double (tests/jobs/doubles.py)."""
    log = out / "setup_attempts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(pid), float(t)) for pid, t in (line.split() for line in lines)]


def test_a_setup_error_stops_the_in_process_executor_with_its_own_error(city_root, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="model folder /x missing"):
        run(make_cfg(city_root, out, "executor=in_process", MISSING_MODEL))
    assert len(_setup_attempts(out)) == 1


@pytest.mark.parametrize("executor", ["actor_pool", "ray_data"])
def test_a_setup_error_stops_a_ray_executor_at_once_with_its_own_error(
    city_root, ray_local, tmp_path, executor
):
    """A missing model folder is not a dead actor: no replacement loads the models again. The
    job stops with the setup's own exception type and message, seconds after the first attempt,
    after one setup attempt per actor slot (2 here). Before: the actor pool replaced the actor
    ``max_actor_restarts`` times (9 attempts, 2 minutes on 2 cores) and raised a RuntimeError;
    Ray Data raised its ActorDiedError."""
    out = tmp_path / executor
    cfg = make_cfg(city_root, out, f"executor={executor}", MISSING_MODEL)
    with pytest.raises(FileNotFoundError, match="model folder /x missing"):
        run(cfg)
    stopped = time.time()
    attempts = _setup_attempts(out)
    pids = [pid for pid, _ in attempts]
    assert 1 <= len(attempts) <= cfg.ray.num_actors, attempts
    assert len(set(pids)) == len(pids), "a worker process set the stage up twice"
    # From the first failed setup to the driver's exception: Ray reports the actor's death and
    # the driver stops the other actor (the bound only catches retries or a hang).
    first = min(t for _, t in attempts)
    assert stopped - first < 15, f"{stopped - first:.1f} s from the setup error to the job's error"


class _Recorder:
    """A minimal stage: records its life cycle (the protocol every executor drives)."""

    name = "recorder"
    resources = Resources(cpus=1)

    def __init__(self) -> None:
        self.events: list[str] = []

    def setup(self) -> None:
        self.events.append("setup")

    def process_shard(self, task: ShardTask) -> int:
        self.events.append(task.name)
        return len(task)

    def teardown(self) -> None:
        self.events.append("teardown")


def test_in_process_executor_drives_the_stage_protocol():
    stage = _Recorder()
    tasks = [ShardTask("a", (1, 2)), ShardTask("b", (3,))]
    got: list[tuple[str, int]] = []
    stats = run_in_process(stage, tasks, on_result=lambda t, r: got.append((t.name, r)), desc="t")
    assert stage.events == ["setup", "a", "b", "teardown"]
    assert got == [("a", 2), ("b", 1)] and stats.shards_done == 2


def test_only_the_executors_module_imports_ray():
    """factory/ stays Ray-free outside factory/jobs/executors.py (lazy imports included)."""
    factory = REPO / "factory"
    offenders = [
        str(p.relative_to(REPO))
        for p in factory.rglob("*.py")
        if p != factory / "jobs" / "executors.py"
        and any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())
    ]
    assert offenders == []
