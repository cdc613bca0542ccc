"""The generation job's test configuration (test-double synthesizer), shared by the job tests."""

from __future__ import annotations

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
