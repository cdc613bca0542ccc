"""Count what training actually consumed from each source, and what it skipped as bad, from the
batches the model received.

The count is taken in the main process from each batch's ``data_samples`` metainfo (field
``source``, packed by ``PackSegInputs(meta_keys=...)``), i.e. after the workers, the sampler
and collation: it proves that every declared source reached the model and in which proportion.
It is logged every ``interval`` iterations and written to ``<work_dir>/consumed_sources.json``.

Skipped samples travel the same way: a dataset that replaced a bad draw (downstream.segformer.
datasets) names it in the replacement's metainfo ``skipped_samples``, whichever worker decoded
it, and ``SkippedSampleHook`` appends one line per skip to ``<work_dir>/bad_samples.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from factory.atomic import atomic_write_text

SKIPPED_KEY = "skipped_samples"  # metainfo of a replacement sample: the bad draws it replaced


def count_sources(data_samples: list[Any]) -> Counter:
    """Sources of one batch (SegDataSample objects or plain metainfo dicts)."""
    counts: Counter = Counter()
    for ds in data_samples:
        meta = ds if isinstance(ds, dict) else ds.metainfo
        counts[str(meta.get("source", "unknown"))] += 1
    return counts


def consumption_report(counts: Counter, requested_ratio: float | None) -> dict:
    total = sum(counts.values())
    observed = counts.get("synth", 0) / total if total else 0.0
    report = {
        "counts": dict(counts),
        "total": total,
        "observed_synth_fraction": observed,
        "requested_synth_fraction": requested_ratio,
    }
    if requested_ratio is not None:
        report["abs_error"] = abs(observed - requested_ratio)
    return report


@HOOKS.register_module()
class SourceCountHook(Hook):
    """Logs and saves the per-source count of consumed training samples.

    The count covers the whole run across ``--resume``: it is saved in every checkpoint's meta
    (``CHECKPOINT_KEY``) and restored from the checkpoint a run resumes from, so a killed and
    resumed run reports what its model consumed, not only the last call's iterations
    (``counts_this_call`` has those). Priority LOW: it counts an iteration before the
    CheckpointHook (VERY_LOW) saves it.
    """

    priority = "LOW"
    CHECKPOINT_KEY = "consumed_sources"

    def __init__(self, interval: int = 50, out_file: str = "consumed_sources.json") -> None:
        self.interval = interval
        self.out_file = out_file
        self.counts: Counter = Counter()
        self.this_call: Counter = Counter()

    def before_run(self, runner) -> None:
        # before load_or_resume: a resumed checkpoint's counts (after_load_checkpoint) replace these
        self.counts = Counter()
        self.this_call = Counter()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = (checkpoint.get("meta") or {}).get(self.CHECKPOINT_KEY)
        if getattr(runner, "_resume", False) and isinstance(saved, dict):  # not a load_from (fine-tune)
            self.counts = Counter({str(k): int(v) for k, v in saved.items()})

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})[self.CHECKPOINT_KEY] = dict(self.counts)

    def before_train(self, runner) -> None:
        ds = runner.train_dataloader.dataset
        self.requested = getattr(ds, "ratio", None)
        self.declared = tuple(getattr(ds, "sources", ())) or (getattr(ds, "source", "real"),)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if data_batch is not None:
            batch = count_sources(data_batch["data_samples"])
            self.counts.update(batch)
            self.this_call.update(batch)
        if self.every_n_train_iters(runner, self.interval):
            self._log(runner)

    def _log(self, runner) -> dict:
        rep = consumption_report(self.counts, self.requested)
        parts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        msg = f"consumed samples: {parts} (synth fraction {rep['observed_synth_fraction']:.3f}"
        msg += f", requested {self.requested:.3f})" if self.requested is not None else ")"
        runner.logger.info(msg)
        return rep

    def after_train(self, runner) -> None:
        rep = self._log(runner)
        rep["declared_sources"] = list(self.declared)
        missing = [s for s in self.declared if self.counts.get(s, 0) == 0]
        rep["unused_sources"] = missing
        rep["counts_this_call"] = dict(self.this_call)  # a resumed call: the iterations it ran
        path = Path(runner.work_dir) / self.out_file
        atomic_write_text(path, json.dumps(rep, indent=2))
        if missing and rep["total"] >= 2 * len(self.declared):
            raise RuntimeError(
                f"training consumed nothing from source(s) {missing} (counts {dict(self.counts)}); see {path}"
            )


def skipped_samples(data_samples: list[Any]) -> list[dict]:
    """The bad draws a batch's samples replaced (their ``skipped_samples`` metainfo)."""
    out: list[dict] = []
    for ds in data_samples:
        meta = ds if isinstance(ds, dict) else ds.metainfo
        out.extend(meta.get(SKIPPED_KEY) or [])
    return out


@HOOKS.register_module()
class SkippedSampleHook(Hook):
    """Writes each training sample skipped as bad to ``<work_dir>/<out_file>`` (JSON lines:
    iteration, key, source, file, reason) and logs how many were skipped.

    The file is started fresh by a new run; a resumed run keeps the lines of the iterations
    before its checkpoint and drops those it redoes, so nothing is listed twice.
    """

    priority = "VERY_LOW"

    def __init__(self, out_file: str = "bad_samples.jsonl") -> None:
        self.out_file = out_file
        self.count = 0

    def before_train(self, runner) -> None:
        self.path = Path(runner.work_dir) / self.out_file
        kept = []
        if self.path.is_file():
            kept = [
                x for x in self.path.read_text().splitlines() if x and json.loads(x)["iter"] < runner.iter
            ]
        atomic_write_text(self.path, "".join(x + "\n" for x in kept))
        self.count = len(kept)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if data_batch is None:
            return
        bad = skipped_samples(data_batch["data_samples"])
        if not bad:
            return
        self.count += len(bad)
        with self.path.open("a") as f:
            for b in bad:
                f.write(json.dumps({"iter": runner.iter, **b}) + "\n")
        runner.logger.warning(
            f"skipped {len(bad)} bad sample(s) at iter {runner.iter} ({self.count} so far, see {self.path})"
        )

    def after_train(self, runner) -> None:
        if self.count:
            runner.logger.warning(
                f"training skipped {self.count} bad sample draw(s); they are listed in {self.path}"
            )
