"""Neural-layout extraction on Ray: fit the PCA (distributed feature sampling), then write every
sample's layout (float16, H/16 x W/16) as webdataset shards keyed by sample key.

Usage::

    python -m factory.jobs.extract_layouts --config configs/extract/procedural.yaml [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python -m factory.jobs.extract_layouts --config configs/extract/procedural.yaml out=/abs/path

1. Plan: the dataset's references sorted by key, split into shards (shard i = the same refs).
2. PCA (unless ``layout.pca`` names a fitted artifact, or ``<out>/pca`` exists from an earlier
   run): actors compute features and return the sampled vectors of their images; positions
   depend only on (seed, key) and ``fit_pca`` adds them in sorted key order, so the PCA is
   bit-identical for any number of actors.
3. Layouts: actors write ``<key>.layout.npy`` + ``<key>.json`` per sample into one tar per
   shard, then the shard's manifest part. A rerun skips shards whose part exists; a bad sample
   is a ``failed`` row with its reason and the job goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.config import check, load_config, to_dict
from factory.data.datasets import DatasetConfig
from factory.data.sample import DataError, Sample, SampleRef
from factory.jobs.common import (
    RayConfig,
    check_plan,
    digest,
    init_ray,
    list_references,
    load_ahead,
    plan_actors,
    run_actor_pool,
    shard_name,
    shutdown_ray_we_started,
    split_into_shards,
)
from factory.layout.neural import LayoutConfig
from factory.shards import Manifest, ManifestRow, ShardWriter, remove_stale_temporaries

log = logging.getLogger("factory.jobs.extract_layouts")


@dataclass
class ExtractConfig:
    """The extraction job: which references, how layouts are computed, how work is split."""

    out: Path
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    samples_per_shard: int = 64
    # Threads per actor that decode (and resize) the next batch while the model works on this
    # one. A 2048x1024 Cityscapes PNG takes ~35 ms to decode on one core, so a GPU actor at
    # ~90 img/s needs about 4 of them; with 1 the GPU would wait on the CPU most of the time.
    load_threads: int = 4
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        check(self.load_threads >= 1, "load_threads", f"must be >= 1, got {self.load_threads}")


def _load(ref: SampleRef):
    """The decoded reference, or the reason it cannot be used."""
    from factory.data.cityscapes import load_sample

    if ref.meta.get("listing_error"):
        return None, f"reference incomplete: {ref.meta['listing_error']}"
    try:
        return load_sample(ref, labels=False), ""
    except (DataError, OSError, ValueError) as e:
        return None, f"reference unreadable: {e}"


Loaded = tuple[SampleRef, Sample | None, tuple[int, int], str]  # ref, sample, original size, problem


def _prepare(ref: SampleRef, resolution: tuple[int, int] | None) -> tuple[Any, tuple[int, int], str]:
    """Decode ``ref`` and resize its image to the layout resolution (in a loader thread)."""
    from factory.layout.neural import resize_image

    sample, problem = _load(ref)
    if sample is None:
        return None, (0, 0), problem
    size = sample.size
    sample.image = resize_image(sample.image, resolution)
    return sample, size, ""


def load_batches(
    refs: Sequence[SampleRef], batch_size: int, threads: int, resolution: tuple[int, int] | None
) -> Iterator[list[Loaded]]:
    """``refs`` in batches, decoded and resized to the layout resolution by ``threads`` loader
    threads, batch i + 1 while the caller computes on batch i (``load_ahead``)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        prepare = functools.partial(_prepare, resolution=resolution)
        for batch in load_ahead(refs, batch_size, pool, prepare, key=lambda ref: ref.key):
            yield [(ref, *loaded) for ref, loaded in batch]


class ExtractWorker:
    """Loads the backbone once; samples PCA vectors or writes layout shards."""

    def __init__(self, cfg: ExtractConfig, slot: int, run_id: str, pca_path: str | None):
        from factory.layout.neural import build_backbone

        self.cfg = cfg
        self.run_id = run_id
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.backbone = build_backbone(cfg.layout)
        self.layout = None
        if pca_path is not None:
            from factory.layout.neural import NeuralLayout
            from factory.layout.pca import PCAArtifact

            self.layout = NeuralLayout(self.backbone, PCAArtifact.load(pca_path), cfg.layout.resolution)

    def sample_vectors(self, shard: str, payload: tuple[list[SampleRef], dict[str, int]]) -> dict[str, Any]:
        """PCA vectors {key: (n, C) float32} of a shard's readable images."""
        from factory.layout.neural import batch_vectors

        refs, counts = payload
        vectors, bad = {}, {}
        lc = self.cfg.layout
        for batch in load_batches(refs, lc.batch_size, self.cfg.load_threads, lc.resolution):
            samples = []
            for ref, sample, _, problem in batch:
                if sample is None:
                    bad[ref.key] = problem
                else:
                    samples.append(sample)
            if samples:
                got = batch_vectors(
                    self.backbone, samples, counts, self.cfg.layout.sample_seed, self.cfg.layout.resolution
                )
                vectors.update({k: v.numpy() for k, v in got.items()})
        return {"vectors": vectors, "bad": bad, "n": len(refs)}

    def process_shard(self, shard: str, refs: list[SampleRef]) -> dict[str, int]:
        """Write ``<key>.layout.npy`` (float16, N x H/16 x W/16) + ``<key>.json`` for a shard."""
        assert self.layout is not None, "layout phase needs a fitted PCA"
        writer = ShardWriter(self.cfg.out / "shards" / f"{shard}.tar")
        rows: list[ManifestRow] = []
        counts: Counter[str] = Counter()
        lc = self.cfg.layout
        signature = json.loads(json.dumps(self.layout.signature(), default=str))
        for batch in load_batches(refs, lc.batch_size, self.cfg.load_threads, lc.resolution):
            samples, sizes = [], []
            for ref, sample, size, problem in batch:
                if sample is None:
                    rows.append(self._row(ref.key, shard, "failed", problem))
                    counts["failed"] += 1
                else:
                    samples.append(sample)
                    sizes.append(size)
            if not samples:
                continue
            t0 = time.perf_counter()
            stored = self.layout.compute_stored(samples).numpy()
            dt = (time.perf_counter() - t0) / len(samples)
            for sample, size, layout in zip(samples, sizes, stored):
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(layout), allow_pickle=False)
                meta = {
                    "key": sample.key,
                    "shape": list(layout.shape),
                    "dtype": "float16",
                    "image_size": list(size),  # the reference's, before any resize
                    "layout": signature,
                }
                writer.add_members(
                    sample.key,
                    {
                        "layout.npy": buf.getvalue(),
                        "json": json.dumps(meta, sort_keys=True, indent=1).encode(),
                    },
                )
                rows.append(self._row(sample.key, shard, "ok", "", dt))
                counts["ok"] += 1
        written = {w.key: w for w in writer.close()}
        for r in rows:
            if r.status == "ok":
                r.checksums = written[r.key].checksums
        Manifest(self.cfg.out / "manifest").write_part(shard, rows)
        return dict(counts)

    def _row(self, key: str, shard: str, status: str, reason: str, seconds: float = 0.0) -> ManifestRow:
        return ManifestRow(
            key=key,
            source_key=key,
            variant="layout",
            shard=shard,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            run_id=self.run_id,
            worker=self.name,
            timings={"layout_s": seconds} if seconds else {},
        )


@dataclass
class ExtractSummary:
    out: Path
    pca: Path
    fitted: bool
    shards_total: int
    shards_done: list[str]
    counts: dict[str, int]
    seconds: float


@shutdown_ray_we_started()
def run(cfg: ExtractConfig) -> ExtractSummary:
    from factory.layout.neural import build_backbone, pca_meta
    from factory.layout.pca import fit_pca, sample_counts

    t0 = time.perf_counter()
    if not cfg.progress:
        os.environ["TQDM_DISABLE"] = "1"
    out = cfg.out.resolve()
    cfg = dataclasses.replace(cfg, out=out)
    # 1. Plan.
    refs = list_references(cfg.dataset)
    if not refs:
        raise RuntimeError(f"{cfg.dataset.root}: no references found for split {cfg.dataset.split!r}")
    shards = [(shard_name(i), c) for i, c in enumerate(split_into_shards(refs, cfg.samples_per_shard))]
    check_plan(
        out,
        {
            "job": "extract_layouts",
            "refs": digest([r.key for r in refs]),
            "samples_per_shard": cfg.samples_per_shard,
            "layout": digest(to_dict(cfg.layout)),
        },
    )
    for folder in (out / "shards", out / "manifest"):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    run_id = uuid.uuid4().hex[:12]

    # 2. PCA: given, reused from an earlier run, or fitted now from distributed samples.
    fitted = False
    pca_path = cfg.layout.pca or out / "pca"
    if not Path(f"{pca_path}.safetensors").is_file():
        if cfg.layout.pca is not None:
            raise FileNotFoundError(
                f"layout.pca: {pca_path}.safetensors does not exist (fix: fit it, or unset)"
            )
        init_ray(cfg.ray)
        counts = sample_counts([r.key for r in refs], cfg.layout.pca_samples, cfg.layout.sample_seed)
        vectors: dict[str, Any] = {}
        bad: dict[str, str] = {}

        def on_vectors(name: str, result: dict[str, Any]) -> int:
            vectors.update(result["vectors"])
            bad.update(result["bad"])
            return result["n"]

        plan = plan_actors(cfg.ray, len(shards))
        run_actor_pool(
            ExtractWorker,
            lambda slot: (cfg, slot, run_id, None),
            plan,
            [(n, (c, {r.key: counts[r.key] for r in c})) for n, c in shards],
            method="sample_vectors",
            in_flight_per_actor=cfg.ray.in_flight_per_actor,
            max_restarts=cfg.ray.max_actor_restarts,
            on_result=on_vectors,
            total_items=len(refs),
            desc="PCA features",
        )
        for key, reason in sorted(bad.items()):
            log.warning("PCA: skipping %s: %s", key, reason)
        import torch

        backbone = build_backbone(cfg.layout)  # for its signature (the driver loads it once)
        n = min(cfg.layout.n_components, backbone.channels)
        pca = fit_pca(
            {k: torch.from_numpy(np.array(v)) for k, v in vectors.items()}, n, pca_meta(backbone, cfg.layout)
        )
        pca.save(pca_path)
        fitted = True
        del backbone

    # 3. Layout shards (resume: skip shards whose manifest part and tar exist).
    done = Manifest(out / "manifest").done_shards()
    todo = [(n, c) for n, c in shards if n not in done or not (out / "shards" / f"{n}.tar").exists()]
    totals: Counter[str] = Counter()
    if todo:
        init_ray(cfg.ray)

        def on_shard(name: str, result: dict[str, int]) -> int:
            totals.update(result)
            return sum(result.values())

        run_actor_pool(
            ExtractWorker,
            lambda slot: (cfg, slot, run_id, str(pca_path)),
            plan_actors(cfg.ray, len(todo)),
            todo,
            method="process_shard",
            in_flight_per_actor=cfg.ray.in_flight_per_actor,
            max_restarts=cfg.ray.max_actor_restarts,
            on_result=on_shard,
            total_items=sum(len(c) for _, c in todo),
            desc="layouts",
        )
    return ExtractSummary(
        out, Path(pca_path), fitted, len(shards), [n for n, _ in todo], dict(totals), time.perf_counter() - t0
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/extract/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(ExtractConfig, args.config, args.overrides)
    s = run(cfg)
    print(json.dumps({"out": str(s.out), "pca": str(s.pca), "fitted": s.fitted, "counts": s.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
