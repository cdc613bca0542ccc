"""The generation job: every (reference, variant) -> one synthetic sample, on Ray, exactly once.

Usage::

    python -m factory.jobs.generate --config configs/generate/procedural.yaml [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python -m factory.jobs.generate --config configs/generate/procedural.yaml out=/abs/path

Outline (each step is a function below):
1. Validate the config (unknown key, wrong type or impossible value fail here, naming the field).
2. Plan: list references (factory.data), expand variants (factory.synth), sort, split into
   shards of ``samples_per_shard`` items. Skip shards whose manifest part exists (resume).
3. Run a pool of actors (one per GPU; CPU actors without GPUs). An actor loads the models (and
   the optional label-consistency segmenter) once and turns one shard into one tar + one
   manifest part; factory.quality checks every sample and retries rejected ones with new seeds
   (``quality`` section), each attempt a manifest row; out-of-memory halves its batch; a dead
   actor is replaced and its unfinished shards reassigned.
4. Write the dataset card (markdown + JSON) and a contact sheet PNG.

Shards are byte-identical across reruns and actor counts: items are assigned to shards by the
plan, each sample has its own seed (``sample_seed``), tar headers are fixed, and the per-sample
metadata holds no timings (timings go to the manifest, which is per attempt anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from factory.conditions import ConditionConfig
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
from factory.quality import QualityConfig, SampleResult, synthesize_with_retries
from factory.quality.checks import to_uint8
from factory.shards import Manifest, ManifestRow, ShardConfig, ShardWriter, atomic_write_bytes, label_files
from factory.synth.seeds import sample_seed
from factory.synth.synthesizer import SynthConfig, Synthesizer, SynthOutput, WorkItem
from factory.synth.variants import Variant, VariantsConfig

log = logging.getLogger("factory.jobs.generate")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class FaultsConfig:
    """Fault injection for tests and drills (all off by default).

    ``oom_above_batch``: a synthesizer call with more items raises ``torch.OutOfMemoryError``.
    ``nan_keys``: these synthetic keys' images are replaced by NaN before the job's checks.
    ``kill_after_items``: the first actor SIGKILLs itself after this many items (once per output
    folder). ``delay_s``: sleep per batch (to give a test time to kill the driver mid-job).
    """

    oom_above_batch: int = 0
    nan_keys: list[str] = field(default_factory=list)
    kill_after_items: int = 0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        check(self.oom_above_batch >= 0, "oom_above_batch", f"must be >= 0, got {self.oom_above_batch}")
        check(self.kill_after_items >= 0, "kill_after_items", f"must be >= 0, got {self.kill_after_items}")
        check(self.delay_s >= 0, "delay_s", f"must be >= 0, got {self.delay_s}")


@dataclass
class GenerateConfig:
    """The whole generation job. ``synthesizer`` is "lumen" (factory.synth), or "package.module:f"
    or "path/to/file.py:f" naming a factory ``f(cfg) -> synthesizer`` (custom models, test doubles).
    ``quality``: factory.quality's acceptance thresholds, ``max_attempts`` and the optional
    ``segmenter`` whose label-consistency score is recorded (and gated on with ``min_label_miou``)."""

    out: Path
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    condition: ConditionConfig | None = None  # required by synthesizer "lumen"
    synthesizer: str = "lumen"
    quality: QualityConfig = field(default_factory=QualityConfig)
    seed: int = 0
    samples_per_shard: int = 16
    batch_size: int = 4
    # threads per actor that decode the next batch's references while this batch is synthesised
    load_threads: int = 2
    shards: ShardConfig = field(default_factory=ShardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    contact_sheet_refs: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.load_threads >= 1, "load_threads", f"must be >= 1, got {self.load_threads}")
        check(
            self.synthesizer != "lumen" or self.condition is not None,
            "condition",
            "synthesizer 'lumen' needs a condition (e.g. condition: {kind: layout, layout: {pca: ...}})",
        )
        check(
            self.quality.min_label_miou is None or self.quality.segmenter is not None,
            "quality.segmenter",
            "quality.min_label_miou gates on a label-consistency score, which needs a segmenter "
            "(fix: set quality.segmenter to a saved Segmenter, or quality.min_label_miou: null)",
        )
        check(
            self.contact_sheet_refs >= 0, "contact_sheet_refs", f"must be >= 0, got {self.contact_sheet_refs}"
        )
        check(
            self.synthesizer == "lumen" or self.synthesizer.count(":") == 1,
            "synthesizer",
            f"must be 'lumen', 'package.module:factory' or 'file.py:factory', got {self.synthesizer!r}",
        )


# --------------------------------------------------------------------------------------------
# The synthesizer seen by the job
# --------------------------------------------------------------------------------------------


class SynthesizerLike(Protocol):
    """What the job needs from a synthesizer (``factory.synth.Synthesizer`` fits): ``setup()``
    loads models once; ``__call__(items, samples=...)`` returns one ``SynthOutput`` per item, in
    order, with ``image`` None and ``error`` set for a sample it could not make. Optional:
    ``signature()`` (recorded in each sample's metadata) and ``preview(sample)`` (an RGB image of
    the condition for the contact sheet)."""

    def setup(self) -> Any: ...

    def __call__(self, items: Sequence[WorkItem], *, samples: Sequence[Sample]) -> list[SynthOutput]: ...


def build_synthesizer(cfg: GenerateConfig) -> SynthesizerLike:
    """Resolve ``cfg.synthesizer``: the LUMEN synthesizer, or ``module:factory`` called with cfg."""
    if cfg.synthesizer == "lumen":
        return LumenSynthesizer(cfg)
    module_name, attr = cfg.synthesizer.split(":")
    if module_name.endswith(".py"):  # a file (relative to the working directory)
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"synthesizer: {path} does not exist (fix: a path relative to {Path.cwd()})"
            )
        spec = importlib.util.spec_from_file_location(f"_lumen_synth_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, attr)(cfg)


class LumenSynthesizer:
    """factory.synth's Synthesizer with its condition provider, built inside the actor."""

    def __init__(self, cfg: GenerateConfig):
        self.cfg = cfg
        self.synth: Synthesizer | None = None

    def setup(self) -> LumenSynthesizer:
        from factory.models import load_components, resolve_device

        s = self.cfg.synth
        components = load_components(s.base_model, device=resolve_device(s.device))
        import torch

        from factory.conditions import build_condition

        condition = build_condition(self.cfg.condition, components)
        # An untrained ControlNet (synth.controlnet: null) is initialised from the global RNG:
        # seed it so every actor builds the same one (same weights -> same content hash in the
        # metadata -> byte-identical shards across actors and reruns).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            self.synth = Synthesizer(s, components, None, condition).setup()
        return self

    def __call__(self, items: Sequence[WorkItem], *, samples: Sequence[Sample]) -> list[SynthOutput]:
        assert self.synth is not None, "call setup() first"
        return self.synth(items, samples=samples, batch_size=len(items))

    def signature(self) -> dict[str, Any]:
        assert self.synth is not None, "call setup() first"
        return self.synth.signature()

    def preview(self, sample: Sample) -> np.ndarray | None:
        """First three condition channels as RGB (min-max per channel), for the contact sheet."""
        if self.synth is None or self.synth.condition is None:
            return None
        cond = self.synth.condition([sample])[0, :3].float().cpu().numpy()
        lo = cond.reshape(cond.shape[0], -1).min(1)[:, None, None]
        hi = cond.reshape(cond.shape[0], -1).max(1)[:, None, None]
        rgb = ((cond - lo) / np.maximum(hi - lo, 1e-8) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        if rgb.shape[2] < 3:
            rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
        return rgb


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def plan_items(refs: Sequence[SampleRef], variants: Sequence[Variant], job_seed: int) -> list[WorkItem]:
    """Every (reference, variant), reference-major, with its per-sample seed (attempt 0)."""
    items = [WorkItem(ref, v, sample_seed(job_seed, ref.key, v.name)) for ref in refs for v in variants]
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise ValueError(f"two work items share the key {dup!r} (duplicate reference keys in the dataset?)")
    return items


# --------------------------------------------------------------------------------------------
# The actor
# --------------------------------------------------------------------------------------------


@dataclass
class ShardResult:
    shard: str
    counts: dict[str, int]
    busy_s: float
    batch_size: int
    previews: dict[str, np.ndarray] = field(default_factory=dict)


class GenerateWorker:
    """One per GPU (or CPU slot): loads models once, turns a shard's items into a tar + part.

    Checks and retries are factory.quality's (``synthesize_with_retries`` with
    ``cfg.quality``); this class adds what a job needs around them: reading references, the
    out-of-memory fallback, fault injection, shard writing and manifest rows.
    """

    def __init__(self, cfg: GenerateConfig, slot: int, run_id: str, preview_refs: Sequence[str]):
        import torch

        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.cfg = cfg
        self.slot = slot
        self.run_id = run_id
        self.preview_refs = set(preview_refs)
        self.batch_size = cfg.batch_size
        self.items_done = 0
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.manifest = Manifest(cfg.out / "manifest")
        self.pool = ThreadPoolExecutor(cfg.shards.encode_threads, thread_name_prefix="encode")
        self.loader = ThreadPoolExecutor(cfg.load_threads, thread_name_prefix="load")
        self.synth = build_synthesizer(cfg)
        self.synth.setup()
        signature = getattr(self.synth, "signature", None)
        self.signature = _plain(signature()) if callable(signature) else {"synthesizer": cfg.synthesizer}
        self.segmenter = load_segmenter(cfg.quality)
        # Labels are decoded only when something reads them: the label-consistency score, or
        # the GT-label (semseg) condition. The shards get the label *files* either way.
        self.needs_labels = self.segmenter is not None or (
            cfg.condition is not None and cfg.condition.kind == "semseg"
        )

    def pid(self) -> int:
        return os.getpid()

    def _load(self, item: WorkItem) -> tuple[Sample | None, dict[str, Path], str]:
        """The reference image and its label files; a problem is returned as a reason."""
        from factory.data.cityscapes import load_sample

        if item.ref.meta.get("listing_error"):
            return None, {}, f"reference incomplete: {item.ref.meta['listing_error']}"
        try:
            labels = label_files(item.ref)
            sample = load_sample(item.ref, labels=self.needs_labels)
        except (DataError, OSError, ValueError) as e:
            return None, {}, f"reference unreadable: {e}"
        return sample, labels, ""

    def _loaded_batches(
        self, items: list[WorkItem]
    ) -> Iterator[list[tuple[WorkItem, Sample | None, dict[str, Path], str]]]:
        """The items in batches with their references loaded: each distinct reference once (its
        variants share the decoded sample: items are reference-major), and the next batch is
        decoded in loader threads while this one is synthesised (``load_ahead``)."""
        batches = load_ahead(items, self.cfg.batch_size, self.loader, self._load, key=lambda it: it.ref.key)
        for batch in batches:
            yield [(item, *loaded) for item, loaded in batch]

    def _synthesize(
        self,
        items: Sequence[WorkItem],
        condition: Any = None,
        *,
        samples: Sequence[Sample],
        batch_size: int | None = None,
    ) -> list[SynthOutput]:
        """The synthesizer as ``synthesize_with_retries`` calls it: outputs in item order, each
        with its share of its batch's seconds in ``timings['synth_s']``.

        Out of memory halves this actor's batch size (for good) and retries the same items:
        each sample has its own generator, so the outputs do not depend on the batch.
        ``faults.nan_keys`` turns those samples into what the real Synthesizer returns for a
        NaN decode, so the quality checks see a NaN sample whatever the synthesizer.
        """
        import torch

        outputs: list[SynthOutput] = []
        i = 0
        while i < len(items):
            n = self.batch_size
            chunk = list(items[i : i + n])
            t0 = time.perf_counter()
            try:
                if self.cfg.faults.oom_above_batch and len(chunk) > self.cfg.faults.oom_above_batch:
                    raise torch.OutOfMemoryError(f"simulated out of memory at batch {len(chunk)}")
                if self.cfg.faults.delay_s:
                    time.sleep(self.cfg.faults.delay_s)
                out = self.synth(chunk, samples=samples[i : i + n])
            except torch.OutOfMemoryError as e:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("%s: out of memory (%s); batch size now %d", self.name, e, self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if len(out) != len(chunk):
                raise RuntimeError(f"synthesizer returned {len(out)} outputs for {len(chunk)} items")
            share = (time.perf_counter() - t0) / len(chunk)
            for o in out:
                timings = {"synth_s": share, **{k: float(v) for k, v in (o.timings or {}).items()}}
                o = dataclasses.replace(o, timings=timings)
                if o.key in self.cfg.faults.nan_keys and o.image is not None:
                    bad = int(np.asarray(o.image).size)
                    o = dataclasses.replace(
                        o,
                        image=None,
                        nonfinite=bad,
                        error=f"nonfinite: {bad} values are NaN (fault injection)",
                    )
                outputs.append(o)
            i += len(chunk)
        return outputs

    def _maybe_die(self) -> None:
        """Fault injection: SIGKILL this actor's own process (once per output folder)."""
        n = self.cfg.faults.kill_after_items
        if not n or self.slot != 0 or self.items_done < n:
            return
        marker = self.cfg.out / ".fault-killed"
        if marker.exists():
            return
        marker.write_text(self.name)
        os.kill(os.getpid(), signal.SIGKILL)

    def process_shard(self, shard: str, items: list[WorkItem]) -> ShardResult:
        """Synthesise a shard's items (retrying rejected ones with new seeds), write tar + part."""
        rows: list[ManifestRow] = []
        writer = ShardWriter(self.cfg.out / "shards" / f"{shard}.tar", self.cfg.shards, self.pool)
        counts: Counter[str] = Counter()
        busy = 0.0
        previews: dict[str, np.ndarray] = {}
        for batch in self._loaded_batches(items):
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
                writer.add(item.key, image, labels, self._metadata(item, sample, res, image))
                preview = getattr(self.synth, "preview", None)
                if sample.key in self.preview_refs and sample.key not in previews and callable(preview):
                    img = preview(sample)
                    if img is not None:
                        previews[sample.key] = img
            self.items_done += len(batch)
            self._maybe_die()
        # 4. Commit: the tar first (atomic rename), then its manifest part.
        written = {w.key: w for w in writer.close()}
        for r in rows:
            if r.status == "ok":
                r.checksums = written[r.key].checksums
        self.manifest.write_part(shard, rows)
        return ShardResult(shard, dict(counts), busy, self.batch_size, previews)

    def _metadata(
        self, item: WorkItem, sample: Sample, res: SampleResult, image: np.ndarray
    ) -> dict[str, Any]:
        """Deterministic per-sample metadata. No timings: shards must be byte-reproducible
        across reruns and actor counts, so timings live in the manifest (one row per attempt)."""
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
            "label_size": list(sample.size),
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
            worker=self.name,
            timings=timings or {},
        )


def load_segmenter(cfg: QualityConfig) -> Any:
    """The configured label-consistency segmenter (``quality.segmenter``), or None."""
    if cfg.segmenter is None:
        return None
    from factory.quality.segmenter import Segmenter

    return Segmenter.load(cfg.segmenter)


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


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class JobSummary:
    out: Path
    run_id: str
    shards_total: int
    shards_skipped: int
    shards_done: list[str]
    counts: dict[str, int]
    actors_died: int
    reassigned: list[str]
    seconds: float
    card: dict[str, Any]


@shutdown_ray_we_started()
def run(cfg: GenerateConfig, on_event: Callable[[str, Any], None] | None = None) -> JobSummary:
    """Plan, skip what is done, run the actors, write the card. Returns a summary."""
    t0 = time.perf_counter()
    if not cfg.progress:
        os.environ["TQDM_DISABLE"] = "1"
    # 1. Plan (fails fast on a bad dataset or prompt file, before Ray starts).
    variants = cfg.variants.build()
    load_segmenter(cfg.quality)  # a missing or unreadable segmenter fails here, not in every actor
    refs = list_references(cfg.dataset)
    if not refs:
        raise RuntimeError(f"{cfg.dataset.root}: no references found for split {cfg.dataset.split!r}")
    items = plan_items(refs, variants, cfg.seed)
    shards = [
        (shard_name(i), chunk) for i, chunk in enumerate(split_into_shards(items, cfg.samples_per_shard))
    ]
    out = cfg.out.resolve()
    check_plan(
        out,
        {
            "job": "generate",
            "items": digest([i.key for i in items]),
            "samples_per_shard": cfg.samples_per_shard,
            "seed": cfg.seed,
            "synth": digest(
                [cfg.synthesizer, to_dict(cfg.synth), cfg.condition, [to_dict(v) for v in variants]]
            ),
            "image_format": cfg.shards.image_format,
            "quality": digest(to_dict(cfg.quality)),  # thresholds decide which attempt is shipped
        },
    )
    manifest = Manifest(out / "manifest")
    for folder in (out / "shards", manifest.folder):
        folder.mkdir(parents=True, exist_ok=True)
        from factory.shards import remove_stale_temporaries

        remove_stale_temporaries(folder)
    done = manifest.done_shards()
    todo = [(n, chunk) for n, chunk in shards if n not in done or not (out / "shards" / f"{n}.tar").exists()]
    log.info(
        "%d items in %d shards; %d shards already done", len(items), len(shards), len(shards) - len(todo)
    )

    # 2. Run the actors.
    run_id = uuid.uuid4().hex[:12]
    counts: Counter[str] = Counter()
    previews: dict[str, np.ndarray] = {}
    preview_refs = [r.key for r in refs[: cfg.contact_sheet_refs]]
    stats = None
    if todo:
        init_ray(cfg.ray)
        plan = plan_actors(cfg.ray, len(todo))
        log.info("starting %d %s actor(s) with %s", plan.count, plan.kind, plan.options)
        job_cfg = _with_out(cfg, out)

        def on_result(name: str, result: ShardResult) -> int:
            counts.update(result.counts)
            previews.update(result.previews)
            if on_event:
                on_event("shard", result)
            return sum(result.counts.values())

        stats = run_actor_pool(
            GenerateWorker,
            lambda slot: (job_cfg, slot, run_id, preview_refs),
            plan,
            todo,
            method="process_shard",
            in_flight_per_actor=cfg.ray.in_flight_per_actor,
            max_restarts=cfg.ray.max_actor_restarts,
            on_result=on_result,
            total_items=sum(len(c) for _, c in todo),
            desc="generate",
        )
        accounting = {"kind": plan.kind, **plan.options}
    else:
        accounting = {"kind": "none"}

    # 3. Dataset card and contact sheet (from the manifest: covers every run).
    card = write_card(out, cfg, variants, manifest, accounting)
    write_contact_sheet(out, refs[: cfg.contact_sheet_refs], variants, previews)
    return JobSummary(
        out=out,
        run_id=run_id,
        shards_total=len(shards),
        shards_skipped=len(shards) - len(todo),
        shards_done=[n for n, _ in todo],
        counts=dict(counts),
        actors_died=stats.actors_died if stats else 0,
        reassigned=stats.reassigned if stats else [],
        seconds=time.perf_counter() - t0,
        card=card,
    )


def _with_out(cfg: GenerateConfig, out: Path) -> GenerateConfig:
    return dataclasses.replace(cfg, out=out)


def write_card(
    out: Path,
    cfg: GenerateConfig,
    variants: Sequence[Variant],
    manifest: Manifest,
    accounting: dict[str, Any],
) -> dict[str, Any]:
    """Dataset card: counts per variant, rejections and reasons, compute per accepted sample."""
    rows = manifest.rows()
    final: dict[str, dict] = {}
    for r in rows:  # the last attempt of a key is its final status
        if r["key"] not in final or r["attempt"] >= final[r["key"]]["attempt"]:
            final[r["key"]] = r
    per_variant: dict[str, Counter[str]] = defaultdict(Counter)
    for r in final.values():
        per_variant[r["variant"]][r["status"]] += 1
    reasons = Counter(r["reason"] for r in rows if r["status"] != "ok")
    accepted = sum(c["ok"] for c in per_variant.values())
    synth_s = sum(r["timings"].get("synth_s", 0.0) for r in rows)
    resource = accounting.get("num_gpus") or accounting.get("num_cpus") or 1.0
    device = "GPU" if accounting.get("kind") == "gpu" else "CPU"
    card = {
        "out": str(out),
        "samples": {"accepted": accepted, "final": len(final), "attempts": len(rows)},
        "per_variant": {v.name: dict(per_variant.get(v.name, {})) for v in variants},
        "not_accepted_reasons": dict(reasons.most_common()),
        f"{device.lower()}_seconds_per_accepted_sample": (synth_s * resource / accepted)
        if accepted
        else None,
        "variants": [
            {"name": v.name, "prompt": v.prompt, "negative_prompt": v.negative_prompt} for v in variants
        ],
        "config": to_dict(cfg),
    }
    atomic_write_bytes(out / "card.json", json.dumps(card, indent=1, sort_keys=True, default=str).encode())
    lines = [
        "# Synthetic dataset card",
        "",
        f"Output: `{out}`  ",
        f"Accepted samples: {accepted} of {len(final)} (attempts: {len(rows)})  ",
        f"{device}-seconds per accepted sample: "
        + (f"{card[f'{device.lower()}_seconds_per_accepted_sample']:.3f}" if accepted else "n/a"),
        "",
        "| variant | prompt | ok | rejected | failed |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        c = per_variant.get(v.name, Counter())
        lines.append(f"| {v.name} | {v.prompt} | {c['ok']} | {c['rejected']} | {c['failed']} |")
    lines += ["", "## Not accepted: reasons", ""]
    lines += [f"- {n} x {reason}" for reason, n in reasons.most_common()] or ["- none"]
    atomic_write_bytes(out / "card.md", ("\n".join(lines) + "\n").encode())
    return card


def write_contact_sheet(
    out: Path, refs: Sequence[SampleRef], variants: Sequence[Variant], previews: dict[str, np.ndarray]
) -> Path | None:
    """reference | layout | variant 1 | ... per row, read back from the shards."""
    import cv2

    from factory.shards import read_shard_samples

    if not refs:
        return None
    wanted = {r.key for r in refs}
    found: dict[str, np.ndarray] = {}
    shard_paths = sorted((out / "shards").glob("shard-*.tar"))
    for s in read_shard_samples(shard_paths):
        src = s["__key__"].rpartition("__")[0]
        if src in wanted:
            ext = next(e for e in ("png", "jpg", "webp") if e in s)
            found[s["__key__"]] = cv2.imdecode(np.frombuffer(s[ext], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    rows = []
    for ref in refs:
        ref_img = cv2.imread(str(ref.paths["image"]), cv2.IMREAD_COLOR)
        h, w = (ref_img.shape[:2]) if ref_img is not None else (64, 128)
        panels = [ref_img[:, :, ::-1] if ref_img is not None else np.zeros((h, w, 3), np.uint8)]
        layout = previews.get(ref.key)
        panels.append(layout if layout is not None else np.full((h, w, 3), 128, np.uint8))
        for v in variants:
            img = found.get(f"{ref.key}__{v.name}")
            panels.append(img if img is not None else np.zeros((h, w, 3), np.uint8))
        panels = [cv2.resize(np.ascontiguousarray(p), (w, h), interpolation=cv2.INTER_AREA) for p in panels]
        rows.append(np.concatenate(panels, axis=1))
    sheet = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(sheet[:, :, ::-1]))
    path = out / "contact_sheet.png"
    atomic_write_bytes(path, buf.tobytes())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/generate/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(GenerateConfig, args.config, args.overrides)
    summary = run(cfg)
    print(
        json.dumps(
            {
                "out": str(summary.out),
                "shards_total": summary.shards_total,
                "shards_skipped": summary.shards_skipped,
                "counts": summary.counts,
                "actors_died": summary.actors_died,
                "accepted_total": summary.card["samples"]["accepted"],
                "seconds": round(summary.seconds, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
