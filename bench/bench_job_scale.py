"""The generation job's own costs at Cityscapes' real count: 2975 references x 4 variants.

What this isolates is everything but the model: listing the dataset, planning 11,900 items,
the fingerprint, shard writing and manifest parts, the card and contact sheet, and each
resume check over the finished folder. The city has Cityscapes' train count at a small image
size (``--height/--width``, default 64x128: the per-item costs here do not depend on pixels
except the shard bytes), and the synthesizer is the test double (tests/jobs/doubles.py, a
seeded colour shift), run in-process. Each step runs in its own fresh process
(a spawned process), so its peak RSS is its own.

Usage::

    python bench/bench_job_scale.py [--refs 2975] [--out /tmp/job-scale]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOUBLE = f"{ROOT / 'tests' / 'jobs' / 'doubles.py'}:build"


def _write_city(out: Path, refs: int, height: int, width: int) -> dict[str, Any]:
    from factory.data.procedural import generate_city

    t0 = time.perf_counter()
    generate_city(out, n_train=refs, n_val=1, n_acdc=0, height=height, width=width, seed=0, workers=2)
    return {"seconds": time.perf_counter() - t0}


def _job(city: Path, out: Path, check: str) -> dict[str, Any]:
    from factory.config import load_config
    from factory.jobs.generate import GenerateConfig, run

    cfg = load_config(
        GenerateConfig,
        None,
        [f"out={out}", f"dataset.root={city / 'cityscapes'}", "dataset.split=train",
         f"variants.prompts={ROOT / 'configs' / 'prompts' / 'weather.yaml'}", "variants.sets=[fog, night, rain, snow]",
         f"synthesizer={DOUBLE}", "samples_per_shard=64", "batch_size=16", "progress=false",
         "executor=in_process", f"resume_check={check}"],
    )  # fmt: skip
    t0 = time.perf_counter()
    summary = run(cfg)
    return {
        "seconds": time.perf_counter() - t0,
        "shards": summary.shards_total,
        "skipped": summary.shards_skipped,
        "counts": summary.counts,
    }


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    result = fn(*args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, default=2975)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("/tmp/job-scale"))
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    city, out = a.out / "city", a.out / "job"
    ctx = multiprocessing.get_context("spawn")
    steps: list[tuple[str, Any, tuple[Any, ...]]] = [
        (f"write the city ({a.refs} train references at {a.height}x{a.width}, 2 workers)", _write_city,
         (city, a.refs, a.height, a.width)),
        ("the job from scratch (list, plan, fingerprint, 4 variants, shards, card)", _job, (city, out, "checksums")),
        *((f"rerun of the finished folder, resume_check={c}", _job, (city, out, c))
          for c in ("size", "members", "checksums")),
    ]  # fmt: skip
    print(f"machine: {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}")
    print("| step | seconds | peak RSS (MB) | shards (skipped) |")
    print("|---|---|---|---|")
    for name, fn, args in steps:
        # a pool's workers are daemons and may not start the city's workers; an executor's are not
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            r = pool.submit(_in_child, fn, *args).result()
        shards = f"{r['shards']} ({r['skipped']})" if "shards" in r else ""
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {shards} |", flush=True)
    disk = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 1e9
    print(f"shards on disk: {disk:.2f} GB")


if __name__ == "__main__":
    main()
