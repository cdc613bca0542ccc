"""Neural-layout extraction on Ray: fit the PCA (distributed feature sampling), then write every
sample's layout (float16, H/16 x W/16) as webdataset shards keyed by sample key.

Usage::

    python -m factory.jobs.extract_layouts --config configs/extract/procedural.yaml [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python -m factory.jobs.extract_layouts --config configs/extract/procedural.yaml out=/abs/path

1. Plan (factory.jobs.plan): the dataset's references sorted by key, split into shards (shard
   i = the same refs); the fingerprint is checked, finished shards are skipped.
2. PCA (unless ``layout.pca`` names a fitted artifact, or ``<out>/pca`` exists from an earlier
   run): ``PCASampleStage`` workers compute features and return the sampled vectors of their
   images; positions depend only on (seed, key) and ``fit_pca`` adds them in sorted key order,
   so the PCA is bit-identical for any number of workers and any executor.
3. Layouts: ``LayoutStage`` workers write ``<key>.layout.npy`` + ``<key>.json`` per sample into
   one tar per shard, then the shard's manifest part. A bad sample is a ``failed`` row with its
   reason and the job goes on. ControlNet training and generation read these shards
   (``factory.layout.store``) instead of computing the layouts again.
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

from factory.atomic import digest
from factory.cli import RESUME_JOB, config_help, run_cli
from factory.config import check, load_config, to_dict
from factory.data.datasets import DatasetConfig
from factory.data.members import LAYOUT_MEMBER, META_MEMBER
from factory.data.sample import DataError, Sample, SampleRef
from factory.jobs.executors import ExecutorKind, RayConfig, run_stage, shutdown_ray_we_started
from factory.jobs.identity import content_identity, dataset_identity
from factory.jobs.loading import load_ahead
from factory.jobs.lock import OutputLock
from factory.jobs.plan import ResumeCheck, list_references, make_tasks, prepare_output
from factory.jobs.stage import Resources, ShardTask
from factory.layout.backbones import Backbone
from factory.layout.neural import LayoutConfig
from factory.shards import Manifest, ManifestRow, ShardWriter

log = logging.getLogger("factory.jobs.extract_layouts")


@dataclass
class ExtractConfig:
    """The extraction job: which references, how layouts are computed, how work is split."""

    out: Path  # the job's folder: shards/, manifest/, plan.json, pca/ (when fitted here)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    samples_per_shard: int = 64
    # Threads per worker that decode (and resize) the next batch while the model works on this
    # one. A 2048x1024 Cityscapes PNG takes ~35 ms to decode on one core, so a GPU worker at
    # ~90 img/s needs about 4 of them; with 1 the GPU would wait on the CPU most of the time.
    load_threads: int = 4
    executor: ExecutorKind = "actor_pool"
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True
    resume_check: ResumeCheck = "checksums"  # how a rerun verifies skipped shards (jobs.plan)

    def __post_init__(self) -> None:
        check(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        check(self.load_threads >= 1, "load_threads", f"must be >= 1, got {self.load_threads}")


def _load(ref: SampleRef, storage_options: dict[str, Any] | None = None):
    """The decoded reference, or the reason it cannot be used."""
    from factory.data.cityscapes import load_sample
    from factory.data.tree import fetch

    if ref.meta.get("listing_error"):
        return None, f"reference incomplete: {ref.meta['listing_error']}"
    try:
        fetch(ref, storage_options)  # a URI dataset: into this node's cache
        return load_sample(ref, labels=False), ""
    except (DataError, OSError, ValueError) as e:
        return None, f"reference unreadable: {e}"
    except Exception as e:  # one bad file is one failed row, never a dead job
        return None, f"reference unreadable ({ref.paths.get('image')}): {type(e).__name__}: {e}"


Loaded = tuple[SampleRef, Sample | None, tuple[int, int], str]  # ref, sample, original size, problem


def _prepare(
    ref: SampleRef, resolution: tuple[int, int] | None, storage_options: dict[str, Any] | None = None
) -> tuple[Any, tuple[int, int], str]:
    """Decode ``ref`` and resize its image to the layout resolution (in a loader thread)."""
    from factory.layout.neural import resize_image

    sample, problem = _load(ref, storage_options)
    if sample is None:
        return None, (0, 0), problem
    size = sample.size
    sample.image = resize_image(sample.image, resolution)
    return sample, size, ""


def load_batches(
    refs: Sequence[SampleRef],
    batch_size: int,
    threads: int,
    resolution: tuple[int, int] | None,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[list[Loaded]]:
    """``refs`` in batches, decoded and resized to the layout resolution by ``threads`` loader
    threads, batch i + 1 while the caller computes on batch i (``load_ahead``). A URI dataset's
    files are fetched into the node cache by the same threads (``storage_options``: fsspec's)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        prepare = functools.partial(_prepare, resolution=resolution, storage_options=storage_options)
        for batch in load_ahead(list(refs), batch_size, pool, prepare, key=lambda ref: ref.key):
            yield [(ref, *loaded) for ref, loaded in batch]


class _BackboneStage:
    """What both extraction stages share: the config, declared resources, the backbone."""

    name = "layout"
    backbone: Backbone | None  # built by setup() in the worker, dropped by teardown()

    def __init__(self, cfg: ExtractConfig, run_id: str):
        self.cfg = cfg
        self.run_id = run_id

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.cfg.ray.cpus_per_actor, gpus=self.cfg.ray.gpus_per_actor)

    def setup(self) -> None:
        from factory.layout.neural import build_backbone

        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        self.backbone = build_backbone(self.cfg.layout)

    def teardown(self) -> None:
        self.backbone = None


class PCASampleStage(_BackboneStage):
    """Feature vectors for the PCA fit: a shard's readable images -> {key: (n, C) float32}.

    The task payload is the number of vectors to draw per key (``sample_counts``)."""

    name = "pca_sample"

    def process_shard(self, task: ShardTask) -> dict[str, Any]:
        from factory.layout.neural import batch_vectors

        vectors, bad = {}, {}
        lc = self.cfg.layout
        for batch in load_batches(
            task.items, lc.batch_size, self.cfg.load_threads, lc.resolution, self.cfg.dataset.storage_options
        ):
            samples = []
            for ref, sample, _, problem in batch:
                if sample is None:
                    bad[ref.key] = problem
                else:
                    samples.append(sample)
            if samples:
                assert self.backbone is not None, "setup() builds the backbone"
                got = batch_vectors(self.backbone, samples, task.payload, lc.sample_seed, lc.resolution)
                vectors.update({k: v.numpy() for k, v in got.items()})
        return {"vectors": vectors, "bad": bad, "n": len(task)}


class LayoutStage(_BackboneStage):
    """A shard of references -> a tar of ``<key>.layout.npy`` (float16, N x H/16 x W/16) +
    ``<key>.json``, then its manifest part."""

    name = "layout"

    def __init__(self, cfg: ExtractConfig, run_id: str, pca_path: Path):
        super().__init__(cfg, run_id)
        self.pca_path = pca_path

    def setup(self) -> None:
        from factory.layout.neural import NeuralLayout
        from factory.layout.pca import PCAArtifact

        super().setup()
        assert self.backbone is not None
        self.layout = NeuralLayout(self.backbone, PCAArtifact.load(self.pca_path), self.cfg.layout.resolution)

    def process_shard(self, task: ShardTask) -> dict[str, int]:
        shard = task.name
        writer = ShardWriter(self.cfg.out / "shards" / f"{shard}.tar")
        rows: list[ManifestRow] = []
        counts: Counter[str] = Counter()
        lc = self.cfg.layout
        signature = json.loads(json.dumps(self.layout.signature(), default=str))
        for batch in load_batches(
            task.items, lc.batch_size, self.cfg.load_threads, lc.resolution, self.cfg.dataset.storage_options
        ):
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
                        LAYOUT_MEMBER: buf.getvalue(),
                        META_MEMBER: json.dumps(meta, sort_keys=True, indent=1).encode(),
                    },
                )
                rows.append(self._row(sample.key, shard, "ok", "", dt))
                counts["ok"] += 1
        written = {w.key: w for w in writer.close()}
        for r in rows:
            if r.status == "ok":
                r.checksums = written[r.key].checksums
        Manifest(self.cfg.out / "manifest").write_part(shard, rows, tar_bytes=writer.size)
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
            worker=self.worker,
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
    from factory.jobs.workdir import check_uploaded_paths
    from factory.layout.neural import check_layout_artifacts

    t0 = time.perf_counter()
    if not cfg.progress:
        os.environ["TQDM_DISABLE"] = "1"
    # under `ray job submit --working-dir`, a relative path points into Ray's temporary copy
    check_uploaded_paths(cfg, folders=("layout.model",))
    out = cfg.out.resolve()
    cfg = dataclasses.replace(cfg, out=out)
    # 0. What the config names exists (before Ray); one job per output folder.
    check_layout_artifacts(cfg.layout)
    run_id = uuid.uuid4().hex[:12]
    with OutputLock(out, job="extract_layouts", run_id=run_id):
        return _run_locked(cfg, run_id, t0)


def _run_locked(cfg: ExtractConfig, run_id: str, t0: float) -> ExtractSummary:
    from factory.layout.neural import build_backbone, pca_components, pca_meta
    from factory.layout.pca import fit_pca, pca_files, sample_counts

    out = cfg.out
    # 1. Plan.
    refs = list_references(cfg.dataset)
    if not refs:
        raise DataError(
            cfg.dataset.root,
            f"no references found for split {cfg.dataset.split!r}",
            "check dataset.root and dataset.split",
        )
    fingerprint = {
        "job": "extract_layouts",
        "refs": digest([r.key for r in refs]),
        "dataset": dataset_identity(refs),  # sizes + mtimes of every reference file
        "samples_per_shard": cfg.samples_per_shard,
        "layout": digest(to_dict(cfg.layout)),
        "models": content_identity(to_dict(cfg.layout)),  # backbone model, given PCA: their bytes
    }
    plan = prepare_output(out, fingerprint, make_tasks(refs, cfg.samples_per_shard), cfg.resume_check)

    # 2. PCA: given, reused from an earlier run, or fitted now from distributed samples.
    fitted = False
    pca_path = cfg.layout.pca or out / "pca"
    if not pca_files(pca_path)[0].is_file():
        if cfg.layout.pca is not None:
            raise FileNotFoundError(
                f"layout.pca: {pca_files(pca_path)[0]} does not exist (fix: fit it, or unset)"
            )
        # The driver loads the backbone once, before any worker samples: for the artifact's
        # signature, and so that n_components > its channels fails now, not after the sampling.
        backbone = build_backbone(cfg.layout)
        n = pca_components(cfg.layout, backbone)
        meta = pca_meta(backbone, cfg.layout)
        del backbone
        counts = sample_counts([r.key for r in refs], cfg.layout.pca_samples, cfg.layout.sample_seed)
        vectors: dict[str, Any] = {}
        bad: dict[str, str] = {}

        def on_vectors(task: ShardTask, result: dict[str, Any]) -> None:
            vectors.update(result["vectors"])
            bad.update(result["bad"])

        tasks = [dataclasses.replace(t, payload={r.key: counts[r.key] for r in t.items}) for t in plan.tasks]
        run_stage(
            PCASampleStage(cfg, run_id), tasks, executor=cfg.executor, ray_cfg=cfg.ray,
            on_result=on_vectors, desc="PCA features",
        )  # fmt: skip
        for key, reason in sorted(bad.items()):
            log.warning("PCA: skipping %s: %s", key, reason)
        import torch

        pca = fit_pca({k: torch.from_numpy(np.array(v)) for k, v in vectors.items()}, n, meta)
        pca.save(pca_path)
        fitted = True

    # 3. Layout shards (resume: the shards the plan found done are skipped).
    totals: Counter[str] = Counter()
    if plan.todo:

        def on_shard(task: ShardTask, result: dict[str, int]) -> None:
            totals.update(result)

        run_stage(
            LayoutStage(cfg, run_id, Path(pca_path)), plan.todo, executor=cfg.executor, ray_cfg=cfg.ray,
            on_result=on_shard, desc="layouts",
        )  # fmt: skip
    return ExtractSummary(
        out, Path(pca_path), fitted, len(plan.tasks), [t.name for t in plan.todo], dict(totals),
        time.perf_counter() - t0,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factory.jobs.extract_layouts",
        description=__doc__.split("\n\n")[0],
        epilog=config_help(ExtractConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="configs/extract/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(ExtractConfig, args.config, args.overrides, config_dir="configs/extract")
    s = run(cfg)
    print(json.dumps({"out": str(s.out), "pca": str(s.pca), "fitted": s.fitted, "counts": s.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=RESUME_JOB))
