"""What the Cityscapes-sized procedural city costs to write: time, peak memory and disk, by share.

``python -m factory.data.procedural --preset cityscapes`` writes the real datasets' counts and
sizes (2975 + 500 Cityscapes images at 1024x2048 with disparity, camera and gtBbox3d; ACDC at
1920x1080 with its per-weather counts). This benchmark runs that command at a few shares of the
counts (``--fraction``), each in a fresh process and a fresh folder, and records its wall time,
the peak resident memory of the whole process tree (``resource.getrusage`` of the children) and
the bytes written; then fits time and disk per image (least squares through the origin, since
every image is rendered and written independently) and extrapolates to 100%.

Usage::

    python bench/bench_city_scale.py --fractions 0.01 0.03 [--workers 2] [--out /tmp/city-bench]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from factory.data.procedural import PRESETS


def images_of(fraction: float) -> int:
    p = PRESETS["cityscapes"].scaled(fraction)
    return p.n_train + p.n_val + sum(t + v for t, v in p.acdc.values())


def run(fraction: float, workers: int, out: Path) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "factory.data.procedural", "--out", str(out), "--preset", "cityscapes",
           "--fraction", str(fraction), "--workers", str(workers)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    # ru_maxrss of the children: the largest single process (KiB on Linux), i.e. one worker or the parent
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out)
    return {"fraction": fraction, "images": images_of(fraction), "seconds": seconds,
            "peak_rss_mib": peak_mib, "disk_bytes": disk}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/city-bench"))
    a = ap.parse_args()
    rows = [run(f, a.workers, a.out / f"f{f:g}") for f in a.fractions]
    n_full = images_of(1.0)
    sec_per_image = sum(r["seconds"] * r["images"] for r in rows) / sum(r["images"] ** 2 for r in rows)
    bytes_per_image = sum(r["disk_bytes"] * r["images"] for r in rows) / sum(r["images"] ** 2 for r in rows)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, workers={a.workers}")
    print("| share | images | wall time | peak RSS (largest process) | disk |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fraction']:.0%} | {r['images']} | {r['seconds']:.0f} s | {r['peak_rss_mib']:.0f} MiB | "
              f"{r['disk_bytes'] / 1e9:.2f} GB |")  # fmt: skip
    print(f"| 100% (fit) | {n_full} | {sec_per_image * n_full / 60:.0f} min | (per process: as above) | "
          f"{bytes_per_image * n_full / 1e9:.1f} GB |")  # fmt: skip
    print(json.dumps({"rows": rows, "sec_per_image": sec_per_image, "bytes_per_image": bytes_per_image}))


if __name__ == "__main__":
    main()
