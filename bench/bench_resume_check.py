"""What a verified resume costs: the scan of a finished output folder, members vs checksums.

A rerun of a finished job verifies every shard it skips (factory.jobs.plan.verify_shard):
``resume_check=size`` reads each part's footer and one listing of the tars; ``members`` reads
the manifest part and the tar headers; ``checksums`` (the default) also reads every byte and
compares each member's sha256 with the recorded one. This
benchmark writes ``--shards`` shards of ``--per-shard`` samples (incompressible members of
``--member-kb`` KB: a synthetic image and two labels, like a generation shard) with their
manifest parts, then times ``prepare_output`` over the finished folder with each check, side by
side in one process. It also times ``dataset_identity`` (one stat per reference file) and
``path_identity`` (the content hash the fingerprint takes of a model folder) per GB.

The shards were just written, so they are in the page cache: the figures are the CPU cost of
the check. A cold scan is bounded by the disk (or network file system) read rate instead.

Usage::

    python bench/bench_resume_check.py [--shards 64 --per-shard 16 --member-kb 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from factory.data.sample import SampleRef
from factory.jobs.identity import dataset_identity, path_identity
from factory.jobs.plan import RESUME_CHECKS, make_tasks, prepare_output
from factory.shards import Manifest, ManifestRow, ShardWriter


class _Item:
    def __init__(self, key: str):
        self.key = key


def write_folder(out: Path, shards: int, per_shard: int, member_kb: int) -> list:
    items = [_Item(f"ref{i:07d}__fog") for i in range(shards * per_shard)]
    tasks = make_tasks(items, per_shard)
    manifest = Manifest(out / "manifest")
    for task in tasks:
        writer = ShardWriter(out / "shards" / f"{task.name}.tar")
        for item in task.items:
            writer.add_members(
                item.key,
                {s: os.urandom(member_kb * 1024) for s in ("png", "labelids.png", "instanceids.png")},
            )
        written = writer.close()
        manifest.write_part(
            task.name,
            [ManifestRow(w.key, w.key, "fog", task.name, "ok", checksums=w.checksums) for w in written],
            tar_bytes=writer.size,
        )
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--member-kb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "job"
        tasks = write_folder(out, args.shards, args.per_shard, args.member_kb)
        gb = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 1e9
        times: dict[str, float] = {}
        for check in RESUME_CHECKS:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                plan = prepare_output(out, {"job": "bench"}, tasks, check)
                best = min(best, time.perf_counter() - t0)
                assert not plan.todo and not plan.redone
            times[check] = best
        refs = [
            SampleRef(f"r{i}", {k: p for k, p in zip(("image", "labelids", "instanceids"), sorted((out / "shards").glob("*.tar"))[:3])})
            for i in range(10000)
        ]  # fmt: skip
        t0 = time.perf_counter()
        dataset_identity(refs)
        stat_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path_identity(out / "shards")
        hash_s = time.perf_counter() - t0
    print(f"machine: {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}")
    print(f"folder: {len(tasks)} shards x {args.per_shard} samples, {gb:.2f} GB (warm page cache)")
    for name, s in times.items():
        print(
            f"resume_check={name:9s}: {s:7.3f} s  ({s / len(tasks) * 1e3:6.2f} ms/shard, {gb / s:6.2f} GB/s)"
        )
    print(
        f"checksums / members: {times['checksums'] / times['members']:.1f}x; "
        f"members / size: {times['members'] / times['size']:.1f}x"
    )
    print(f"dataset_identity: {stat_s / 30000 * 1e6:.1f} us per reference file (30000 stats)")
    print(f"path_identity (model content hash): {hash_s / gb:.2f} s per GB")


if __name__ == "__main__":
    main()
