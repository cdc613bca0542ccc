"""The generation job's driver: plan, skip what is done, run the stage, write the card.

Outline (each step a function call):
1. Validate (``preflight``): the config (on load), the prompt sets, the segmenter, the
   synthesizer's recipe and every artifact it names (a ControlNet trained with another PCA or
   base model, a missing model folder: refused here, before Ray starts). Then the output folder
   is locked (``factory.jobs.lock``) for the rest of the run.
2. Plan (factory.jobs.plan): references x variants, sorted, split into shards; the fingerprint
   (settings plus content identities of the dataset and the models) is checked against the
   folder's ``plan.json``; shards that verify against their manifest part are skipped.
3. Run ``GenerateStage`` on the configured executor (actor pool, Ray Data, in-process).
4. Write the dataset card (markdown + JSON) and a contact sheet PNG.

``out`` is a local folder or an fsspec URI (factory.storage); the lock, the plan, the stage and
the card go through the same store, so the steps above read the same for both.

Shards are byte-identical across reruns, worker counts and executors: items are assigned to
shards by the plan, each sample has its own seed (``sample_seed``), tar headers are fixed, and
the per-sample metadata holds no timings (they go to the manifest, which is per attempt).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factory.atomic import digest
from factory.config import to_dict
from factory.data.sample import DataError
from factory.jobs.executors import run_stage, shutdown_ray_we_started
from factory.jobs.generate.card import previous_accounting, write_card, write_contact_sheet
from factory.jobs.generate.config import GenerateConfig
from factory.jobs.generate.preflight import preflight
from factory.jobs.generate.stage import GenerateStage, ShardResult, plan_items
from factory.jobs.identity import content_identity, dataset_identity
from factory.jobs.lock import output_lock
from factory.jobs.plan import list_references, make_tasks, prepare_output
from factory.jobs.stage import ShardTask
from factory.jobs.workdir import check_uploaded_paths
from factory.shards import Manifest
from factory.storage import Location, Store, open_store
from factory.synth.variants import Variant

log = logging.getLogger("factory.jobs.generate")


@dataclass
class JobSummary:
    out: Location  # a local folder (Path) or an fsspec URI (str)
    run_id: str
    shards_total: int
    shards_skipped: int
    shards_redone: dict[str, str]  # looked done but did not verify: shard -> why (redone now)
    shards_done: list[str]
    counts: dict[str, int]
    layouts: dict[str, int]  # layout condition: how many were read from the store, how many computed
    actors_died: int
    reassigned: list[str]
    seconds: float
    card: dict[str, Any]


@shutdown_ray_we_started()
def run(cfg: GenerateConfig) -> JobSummary:
    """Check, lock the output folder, plan, skip what is verifiably done, run the stage, write
    the card. Returns a summary."""
    t0 = time.perf_counter()
    if not cfg.progress:
        os.environ["TQDM_DISABLE"] = "1"
    # under `ray job submit --working-dir`, a relative path points into Ray's temporary copy
    # (the synth.* model folders matter to the LUMEN synthesizer only; a plugin ignores them)
    folders = ("synth.controlnet", "synth.base_model", "synth.condition.layout.model")
    check_uploaded_paths(cfg, folders=folders if cfg.synthesizer == "lumen" else ())
    out = cfg.out.resolve() if isinstance(cfg.out, Path) else cfg.out
    cfg = dataclasses.replace(cfg, out=out)
    store = open_store(out, cfg.storage_options)  # a missing s3fs is named here, before any work
    # 1. Validate what the config names before any work starts (and before Ray).
    cfg, variants = preflight(cfg)
    run_id = uuid.uuid4().hex[:12]
    with output_lock(store, job="generate", run_id=run_id):
        return _run_locked(cfg, store, variants, run_id, t0)


def _run_locked(
    cfg: GenerateConfig, out: Store, variants: list[Variant], run_id: str, t0: float
) -> JobSummary:
    # 2. Plan.
    refs = list_references(cfg.dataset)
    if not refs:
        raise DataError(
            cfg.dataset.root,
            f"no references found for split {cfg.dataset.split!r}",
            "check dataset.root and dataset.split",
        )
    items = plan_items(refs, variants, cfg.seed)
    fingerprint = {
        "job": "generate",
        "items": digest([i.key for i in items]),
        "dataset": dataset_identity(refs),  # sizes + mtimes of every reference file
        "samples_per_shard": cfg.samples_per_shard,
        "seed": cfg.seed,
        "synth": digest([cfg.synthesizer, to_dict(cfg.synth), [to_dict(v) for v in variants]]),
        # the bytes of every model / PCA / plugin / prompt file the config names
        "models": content_identity(
            {
                "synthesizer": cfg.synthesizer,
                "synth": to_dict(cfg.synth),
                "quality": to_dict(cfg.quality),
                "prompts": to_dict(cfg.variants),
            }
        ),  # fmt: skip
        "image_format": cfg.shards.image_format,
        "quality": digest(to_dict(cfg.quality)),  # thresholds decide which attempt is shipped
    }
    plan = prepare_output(out, fingerprint, make_tasks(items, cfg.samples_per_shard), cfg.resume_check)
    manifest = Manifest(out.child("manifest"))

    # 3. Run the stage.
    counts: Counter[str] = Counter()
    layouts: Counter[str] = Counter()
    previews: dict[str, np.ndarray] = {}
    preview_refs = [r.key for r in refs[: cfg.contact_sheet_refs]]
    stats = None
    if plan.todo:

        def on_result(task: ShardTask, result: ShardResult) -> None:
            counts.update(result.counts)
            layouts.update(result.layouts)
            previews.update(result.previews)

        stage = GenerateStage(cfg, run_id, preview_refs)
        stats = run_stage(
            stage, plan.todo, executor=cfg.executor, ray_cfg=cfg.ray, on_result=on_result, desc="generate"
        )
        accounting = {"kind": stats.plan.kind, "executor": cfg.executor, **stats.plan.options}
        if layouts:
            log.info("layouts: %d read from the store, %d computed", layouts["read"], layouts["computed"])
    else:
        accounting = previous_accounting(out) or {"kind": "none"}

    # 4. Dataset card and contact sheet (from the manifest: covers every run).
    card = write_card(out, cfg, variants, manifest, accounting)
    write_contact_sheet(
        out, refs[: cfg.contact_sheet_refs], variants, previews, manifest, cfg.dataset.storage_options
    )
    return JobSummary(
        out=cfg.out,
        run_id=run_id,
        shards_total=len(plan.tasks),
        shards_skipped=plan.skipped,
        shards_redone=plan.redone,
        shards_done=[t.name for t in plan.todo],
        counts=dict(counts),
        layouts=dict(layouts),
        actors_died=stats.workers_died if stats else 0,
        reassigned=stats.reassigned if stats else [],
        seconds=time.perf_counter() - t0,
        card=card,
    )


__all__ = ["JobSummary", "run"]
