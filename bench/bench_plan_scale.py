"""What the generation driver's plan costs as the dataset grows, up to a simulated 1M references.

The driver holds the whole plan: one ``SampleRef`` per reference (its file paths), one
``WorkItem`` per (reference, variant) with its seed (``plan_items``, which also checks that
keys are unique) and the shard tasks (``make_tasks``). This benchmark builds references with
Cityscapes-like paths (no files: listing a real folder adds one directory walk) and times each
step and the growth of the driver's resident memory (RSS, psutil) across the three, at several
sizes, so the growth can be read off (it should be linear; anything worse is a bug at
Cityscapes x 1000). Each size runs in a fresh process, so one size's freed memory does not hide
the next one's.

With ``--resume-scan DIR`` it also writes the plan's finished output folder under DIR - a real
manifest part per shard (64 rows with checksums, as the generation job writes them) and a
placeholder tar of the size the part records (a sparse file: no data, no disk) - and times the
rerun's ``prepare_output`` over it with ``resume_check=size`` (the part footers and one listing
of ``shards/``), with the driver's RSS growth. ``members`` and ``checksums`` read the tars, so
they are measured side by side on real tars by bench/bench_resume_check.py (docs/benchmarks.md
"Resume check") and scale with the shard count.

Usage::

    python bench/bench_plan_scale.py [--refs 10000 100000 1000000] [--variants 4] [--per-shard 64]
                                     [--resume-scan /tmp/scan]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import time
from pathlib import Path

from factory.data.sample import SampleRef
from factory.jobs.generate.stage import plan_items
from factory.jobs.plan import make_tasks
from factory.synth.variants import Variant

ROOT = Path("/data/cityscapes")


def fake_refs(n: int) -> list[SampleRef]:
    """``n`` references named and laid out like Cityscapes train (aachen_000000_000019, ...)."""
    refs = []
    for i in range(n):
        city = f"city{i // 5000:03d}"
        stem = f"{city}_{i // 100:06d}_{i % 100:06d}"
        img = ROOT / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"
        gt = ROOT / "gtFine" / "train" / city
        refs.append(
            SampleRef(
                key=stem,
                paths={
                    "image": img,
                    "labelids": gt / f"{stem}_gtFine_labelIds.png",
                    "instanceids": gt / f"{stem}_gtFine_instanceIds.png",
                    "disparity": ROOT / "disparity" / "train" / city / f"{stem}_disparity.png",
                    "camera": ROOT / "camera" / "train" / city / f"{stem}_camera.json",
                },
                meta={"dataset": "cityscapes", "split": "train", "city": city},
            )
        )
    return refs


# a Cityscapes-size generation sample: a 1024x2048 PNG and its labels, about 4.5 MB with headers
SAMPLE_BYTES = 4_500_000


def write_finished(out: Path, tasks: list) -> None:
    """The finished output of ``tasks``: real parts, placeholder tars of the recorded size."""
    from factory.shards import Manifest, ManifestRow

    manifest = Manifest(out / "manifest")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    sha = "0" * 64
    for task in tasks:
        size = SAMPLE_BYTES * len(task.items)
        rows = [
            ManifestRow(it.key, it.ref.key, it.variant.name, task.name, "ok", seed=it.seed,
                        checksums={"png": sha, "labelids.png": sha, "instanceids.png": sha, "json": sha})
            for it in task.items
        ]  # fmt: skip
        with open(out / "shards" / f"{task.name}.tar", "wb") as f:
            f.truncate(size)  # sparse: the size check never reads it
        manifest.write_part(task.name, rows, tar_bytes=size)


def measure(n: int, variants: list[Variant], per_shard: int, scan: Path | None = None) -> dict[str, float]:
    import psutil

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    refs = fake_refs(n)
    t1 = time.perf_counter()
    items = plan_items(refs, variants, job_seed=0)
    t2 = time.perf_counter()
    tasks = make_tasks(items, per_shard)
    t3 = time.perf_counter()
    grown = proc.memory_info().rss - rss0
    result = {
        "refs": n,
        "items": len(items),
        "shards": len(tasks),
        "refs_s": t1 - t0,
        "plan_items_s": t2 - t1,
        "make_tasks_s": t3 - t2,
        "rss_mb": grown / 2**20,
    }
    if scan is not None:
        from factory.jobs.plan import prepare_output

        out = scan / f"refs{n}"
        t4 = time.perf_counter()
        write_finished(out, tasks)
        result["write_s"] = time.perf_counter() - t4
        rss1 = proc.memory_info().rss
        t5 = time.perf_counter()
        plan = prepare_output(out, {"job": "bench"}, tasks, "size")
        result["scan_s"] = time.perf_counter() - t5
        result["scan_rss_mb"] = (proc.memory_info().rss - rss1) / 2**20
        assert not plan.todo and not plan.redone, plan.redone
    return result


def _measure_in_child(args: tuple[int, list[Variant], int, Path | None]) -> dict[str, float]:
    return measure(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument(
        "--resume-scan", type=Path, default=None, help="also time the size resume scan, under this folder"
    )
    a = ap.parse_args()
    names = ["fog", "night", "rain", "snow", "dusk", "glare", "haze", "sleet"][: a.variants]
    variants = [Variant(name=v, prompt=f"a photo of a city street in {v}", prompt_set=v) for v in names]
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        "| references | work items | shards | build refs (s) | plan_items (s) | make_tasks (s) | driver RSS growth (MB) | per reference (KB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ctx = multiprocessing.get_context("spawn")
    for n in a.refs:
        with ctx.Pool(1) as pool:
            r = pool.apply(_measure_in_child, ((n, variants, a.per_shard, a.resume_scan),))
        print(
            f"| {r['refs']:,} | {r['items']:,} | {r['shards']:,} | {r['refs_s']:.2f} | {r['plan_items_s']:.2f} "
            f"| {r['make_tasks_s']:.3f} | {r['rss_mb']:.0f} | {1024 * r['rss_mb'] / r['refs']:.2f} |"
        )
        if "scan_s" in r:
            print(
                f"  resume scan (size) of the finished folder: {r['scan_s']:.1f} s "
                f"({r['scan_s'] / r['shards'] * 1e3:.2f} ms/shard), driver RSS growth {r['scan_rss_mb']:.0f} MB; "
                f"writing it took {r['write_s']:.0f} s"
            )


if __name__ == "__main__":
    main()
