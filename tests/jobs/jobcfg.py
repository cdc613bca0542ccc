"""The generation job's test configuration (test-double synthesizer), shared by the job tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from factory.config import load_config
from factory.jobs.generate import GenerateConfig

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "configs" / "prompts" / "weather.yaml"
DOUBLE = f"{REPO / 'tests' / 'jobs' / 'doubles.py'}:build"


def overrides(city: Path, out: Path, *extra: str, limit: int = 3) -> list[str]:
    return [
        f"out={out}",
        f"dataset.root={city / 'cityscapes'}",
        "dataset.split=train",
        f"dataset.limit={limit}",
        f"variants.prompts={PROMPTS}",
        "variants.sets=[fog, night]",
        f"synthesizer={DOUBLE}",
        "samples_per_shard=2",
        "batch_size=2",
        "progress=false",
        "ray.num_actors=2",
        *extra,
    ]


def make_cfg(city: Path, out: Path, *extra: str, limit: int = 3) -> GenerateConfig:
    return load_config(GenerateConfig, None, overrides(city, out, *extra, limit=limit))


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def kill_driver_after_first_shard(city: Path, out: Path, tmp: Path, timeout_s: float = 180) -> set[str]:
    """Run the job as a CLI process (slow shards: ``faults.delay_s``), SIGKILL its driver once the
    first shard is committed; returns the shards done by then (at least one, not all three)."""
    from factory.shards import Manifest

    cfg_path = tmp / "job.yaml"
    cfg_path.write_text("{}\n")
    args = overrides(city, out, "faults.delay_s=1.5", "ray.num_actors=1", "ray.local_cpus=1")
    cmd = [sys.executable, "-m", "factory.jobs.generate", "--config", str(cfg_path), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = Manifest(out / "manifest")
    deadline = time.time() + timeout_s
    while time.time() < deadline and not manifest.done_shards() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = manifest.done_shards()
    assert 1 <= len(finished) < 3, "the driver should be killed mid-job"
    return finished
