"""The generation stage: a shard of (reference, variant) items -> one tar + one manifest part.

Ray-free (factory.jobs.stage): ``setup`` loads the synthesizer and the optional judges (the
label-consistency segmenter, the weather classifier) once per worker; ``process_shard`` reads the references (each once per
batch, the next batch in loader threads), synthesises, checks and retries rejected samples with
new seeds (factory.quality), and commits the shard: the tar first (an atomic rename, or one
upload to an object store: factory.storage), then its manifest part. Out of memory halves the worker's batch and retries the same items: each sample
has its own generator, so outputs do not depend on the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from factory.data.members import AGREE_MEMBER
from factory.data.sample import DataError, Sample, SampleRef
from factory.data.tree import fetch
from factory.jobs.generate.config import GenerateConfig
from factory.jobs.loading import load_ahead
from factory.jobs.stage import Resources, ShardTask
from factory.quality import QualityConfig, SampleResult, synthesize_with_retries
from factory.quality.checks import to_uint8
from factory.shards import Manifest, ManifestRow, ShardWriter, label_files
from factory.shards.writer import encode_mask
from factory.storage import open_store
from factory.synth.seeds import sample_seed
from factory.synth.synthesizer import SynthOutput, WorkItem
from factory.synth.variants import Variant

log = logging.getLogger("factory.jobs.generate")

Loaded = tuple[WorkItem, Sample | None, dict[str, Path], str]  # item, sample, label files, problem


def plan_items(refs: Sequence[SampleRef], variants: Sequence[Variant], job_seed: int) -> list[WorkItem]:
    """Every (reference, variant), reference-major, with its per-sample seed (attempt 0)."""
    items = [WorkItem(ref, v, sample_seed(job_seed, ref.key, v.name)) for ref in refs for v in variants]
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise ValueError(f"two work items share the key {dup!r} (duplicate reference keys in the dataset?)")
    return items


@dataclass
class ShardResult:
    """What a finished shard tells the driver: status counts, busy seconds, contact-sheet pictures."""

    shard: str
    counts: dict[str, int]
    busy_s: float
    batch_size: int
    previews: dict[str, np.ndarray] = field(default_factory=dict)
    layouts: dict[str, int] = field(default_factory=dict)  # layout condition: read from the store / computed

    @property
    def items(self) -> int:
        return sum(self.counts.values())


class GenerateStage:
    """One per GPU (or CPU slot): loads models once, turns a shard's items into a tar + part."""

    name = "generate"

    def __init__(self, cfg: GenerateConfig, run_id: str, preview_refs: Sequence[str] = ()):
        self.cfg = cfg
        self.run_id = run_id
        self.preview_refs = set(preview_refs)
        self.batch_size = cfg.batch_size
        self.synth: Any = None

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.cfg.ray.cpus_per_actor, gpus=self.cfg.ray.gpus_per_actor)

    # ------------------------------------------------------------------ setup / teardown
    def setup(self) -> None:
        import torch

        from factory.jobs.generate.faults import FaultDrill
        from factory.jobs.generate.synthesizers import build_synthesizer

        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        cfg = self.cfg
        self.worker = f"{os.uname().nodename}:{os.getpid()}"
        # built here, in the worker, from the config: a file system client is not shipped
        self.store = open_store(cfg.out, cfg.storage_options)
        self.manifest = Manifest(self.store.child("manifest"))
        self.encoder = ThreadPoolExecutor(cfg.shards.encode_threads, thread_name_prefix="encode")
        self.loader = ThreadPoolExecutor(cfg.load_threads, thread_name_prefix="load")
        self.synth = build_synthesizer(cfg)
        if cfg.faults.active:
            self.synth = FaultDrill(self.synth, cfg.faults, self.store)
        signature = getattr(self.synth, "signature", None)
        self.signature = _plain(signature()) if callable(signature) else {"synthesizer": cfg.synthesizer}
        self.segmenter = load_segmenter(cfg.quality)
        self.weather_judge = load_weather_judge(cfg.quality)

    def teardown(self) -> None:
        for pool in (getattr(self, "encoder", None), getattr(self, "loader", None)):
            if pool is not None:
                pool.shutdown(wait=True)

    # ------------------------------------------------------------------ loading
    def _load(self, item: WorkItem) -> tuple[Sample | None, dict[str, Path], str]:
        """The reference image and its label files; a problem is returned as a reason."""
        from factory.data.cityscapes import load_sample

        if item.ref.meta.get("listing_error"):
            return None, {}, f"reference incomplete: {item.ref.meta['listing_error']}"
        try:
            fetch(item.ref, self.cfg.dataset.storage_options)  # a URI dataset: into this node's cache
            labels = label_files(item.ref)
            # Every label file the shard will copy is decoded and checked (ids, size, decodes
            # fully): a corrupt label must be a failed row here, not a crash in someone's
            # training run later. Cheap next to synthesis (~10 ms per Cityscapes frame).
            sample = load_sample(item.ref, labels=True)
        except (DataError, OSError, ValueError) as e:
            return None, {}, f"reference unreadable: {e}"
        except Exception as e:  # one bad file is one failed row, never a dead job
            return None, {}, f"reference unreadable ({item.ref.paths.get('image')}): {type(e).__name__}: {e}"
        return sample, labels, ""

    def loaded_batches(self, items: Sequence[WorkItem]) -> Iterator[list[Loaded]]:
        """The items in batches with their references loaded: each distinct reference once (its
        variants share the decoded sample: items are reference-major), and the next batch is
        decoded in loader threads while this one is synthesised (``load_ahead``)."""
        batches = load_ahead(
            list(items), self.cfg.batch_size, self.loader, self._load, key=lambda it: it.ref.key
        )
        for batch in batches:
            yield [(item, *loaded) for item, loaded in batch]

    # ------------------------------------------------------------------ synthesis
    def _synthesize(
        self,
        items: Sequence[WorkItem],
        condition: Any = None,
        *,
        samples: Sequence[Sample],
        batch_size: int | None = None,
    ) -> list[SynthOutput]:
        """The synthesizer as ``synthesize_with_retries`` calls it: outputs in item order, each
        with its share of its batch's seconds in ``timings['synth_s']``; out of memory halves
        this worker's batch size (for good) and retries the same items."""
        import torch

        outputs: list[SynthOutput] = []
        i = 0
        while i < len(items):
            n = self.batch_size
            chunk = list(items[i : i + n])
            t0 = time.perf_counter()
            try:
                out = self.synth(chunk, samples=samples[i : i + n])
            except torch.OutOfMemoryError as e:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("%s: out of memory (%s); batch size now %d", self.worker, e, self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if len(out) != len(chunk):
                raise RuntimeError(f"synthesizer returned {len(out)} outputs for {len(chunk)} items")
            share = (time.perf_counter() - t0) / len(chunk)
            for o in out:
                timings = {"synth_s": share, **{k: float(v) for k, v in (o.timings or {}).items()}}
                outputs.append(dataclasses.replace(o, timings=timings))
            i += len(chunk)
        return outputs

    # ------------------------------------------------------------------ one shard
    def process_shard(self, task: ShardTask) -> ShardResult:
        """Synthesise a shard's items (retrying rejected ones with new seeds), write tar + part."""
        shard = task.name
        rows: list[ManifestRow] = []
        writer = ShardWriter(f"{shard}.tar", self.cfg.shards, self.encoder, store=self.store.child("shards"))
        counts: Counter[str] = Counter()
        busy = 0.0
        previews: dict[str, np.ndarray] = {}
        layouts_before = self._layout_counts()
        for batch in self.loaded_batches(task.items):
            # 1. The loaded references; unreadable ones are failed samples, the rest go on.
            todo: list[tuple[WorkItem, Sample, dict[str, Path]]] = []
            for item, sample, labels, problem in batch:
                if sample is None:
                    rows.append(self._row(item, shard, "failed", problem))
                    counts["failed"] += 1
                else:
                    todo.append((item, sample, labels))
            # 2. Synthesise, check, retry rejected samples with new seeds (factory.quality).
            results = synthesize_with_retries(
                self._synthesize,
                [(it.ref, it.variant) for it, _, _ in todo],
                job_seed=self.cfg.seed,
                cfg=self.cfg.quality,
                labels=[_trainids(s) for _, s, _ in todo] if self.segmenter is not None else None,
                segmenter=self.segmenter,
                samples=[s for _, s, _ in todo],
                weather_judge=self.weather_judge,
            )
            # 3. One manifest row per attempt; the accepted sample goes to the shard.
            for (item, sample, labels), res in zip(todo, results):
                for a in res.attempts:
                    rows.append(
                        self._row(item, shard, a.status, a.reason or "", a.attempt, a.timings, seed=a.seed)
                    )
                    busy += a.timings.get("synth_s", 0.0)
                counts[res.status] += 1
                if res.status != "ok":
                    continue
                image = to_uint8(np.asarray(res.output.image))
                # with a judge, where it agrees with the reused labels (label-noise-aware reuse)
                agreement = res.quality.agreement
                generated = {AGREE_MEMBER: encode_mask(agreement)} if agreement is not None else None
                writer.add(item.key, image, labels, self._metadata(item, sample, res, image), generated)
                self._maybe_preview(sample, previews)
        # 4. Commit: the tar first (atomic rename or upload), then its manifest part.
        written = {w.key: w for w in writer.close()}
        for r in rows:
            if r.status == "ok":
                r.checksums = written[r.key].checksums
        self.manifest.write_part(shard, rows, tar_bytes=writer.size)
        layouts = {k: v - layouts_before.get(k, 0) for k, v in self._layout_counts().items()}
        return ShardResult(shard, dict(counts), busy, self.batch_size, previews, layouts)

    def _layout_counts(self) -> dict[str, int]:
        """How many layouts the condition has read from its store and computed (layouts only)."""
        from factory.conditions import LayoutCondition

        condition = getattr(self.synth, "condition", None)
        if not isinstance(condition, LayoutCondition):
            return {}
        return {"read": condition.read, "computed": condition.computed}

    def _maybe_preview(self, sample: Sample, previews: dict[str, np.ndarray]) -> None:
        preview = getattr(self.synth, "preview", None)
        if sample.key in self.preview_refs and sample.key not in previews and callable(preview):
            img = preview(sample)
            if img is not None:
                previews[sample.key] = img

    def _metadata(
        self, item: WorkItem, sample: Sample, res: SampleResult, image: np.ndarray
    ) -> dict[str, Any]:
        """Deterministic per-sample metadata. No timings: shards must be byte-reproducible
        across reruns and worker counts, so timings live in the manifest (one row per attempt)."""
        out = res.output
        return {
            "key": item.key,
            "source_key": sample.key,
            "variant": item.variant.name,
            "prompt_set": item.variant.prompt_set,
            "prompt": out.prompt,
            "negative_prompt": out.negative_prompt,
            "seed": int(out.seed),
            "attempt": res.attempts[-1].attempt,
            "job_seed": self.cfg.seed,
            "image_size": [int(image.shape[0]), int(image.shape[1])],
            "label_size": list(sample.label_size),
            "source": {k: v for k, v in sample.meta.items() if isinstance(v, str | int | float | bool)},
            "quality": _plain(res.quality.scores),
            "models": self.signature,
        }

    def _row(
        self,
        item: WorkItem,
        shard: str,
        status: str,
        reason: str,
        attempt: int = 0,
        timings: dict[str, float] | None = None,
        *,
        seed: int | None = None,
    ) -> ManifestRow:
        return ManifestRow(
            key=item.key,
            source_key=item.ref.key,
            variant=item.variant.name,
            shard=shard,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            seed=item.seed if seed is None else seed,
            attempt=attempt,
            run_id=self.run_id,
            worker=self.worker,
            timings=timings or {},
        )


def load_segmenter(cfg: QualityConfig) -> Any:
    """The configured label-consistency segmenter (``quality.segmenter``), or None."""
    if cfg.segmenter is None:
        return None
    from factory.quality.segmenter import Segmenter

    return Segmenter.load(cfg.segmenter)


def load_weather_judge(cfg: QualityConfig) -> Any:
    """The configured weather judge (``quality.weather_judge``), or None."""
    if cfg.weather_judge is None:
        return None
    from factory.eval.controllability import WeatherJudge

    return WeatherJudge.load(cfg.weather_judge)


def _trainids(sample: Sample) -> np.ndarray | None:
    """The reference's labels as trainIds for the label-consistency score (None: no labels)."""
    if sample.semantic is not None:
        from factory.data.labels import id_to_trainid

        return id_to_trainid(sample.semantic)
    return sample.trainids


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars -> Python numbers, tuples -> lists, Paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = ["GenerateStage", "ShardResult", "load_segmenter", "load_weather_judge", "plan_items"]
