"""Count what training actually consumed from each source, from the batches the model received.

The count is taken in the main process from each batch's ``data_samples`` metainfo (field
``source``, packed by ``PackSegInputs(meta_keys=...)``), i.e. after the workers, the sampler
and collation: it proves that every declared source reached the model and in which proportion.
It is logged every ``interval`` iterations and written to ``<work_dir>/consumed_sources.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from factory.atomic import atomic_write_text


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
    """Logs and saves the per-source count of consumed training samples."""

    priority = "VERY_LOW"

    def __init__(self, interval: int = 50, out_file: str = "consumed_sources.json") -> None:
        self.interval = interval
        self.out_file = out_file
        self.counts: Counter = Counter()

    def before_train(self, runner) -> None:
        self.counts = Counter()
        ds = runner.train_dataloader.dataset
        self.requested = getattr(ds, "ratio", None)
        self.declared = tuple(getattr(ds, "sources", ())) or (getattr(ds, "source", "real"),)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if data_batch is not None:
            self.counts.update(count_sources(data_batch["data_samples"]))
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
        path = Path(runner.work_dir) / self.out_file
        atomic_write_text(path, json.dumps(rep, indent=2))
        if missing and rep["total"] >= 2 * len(self.declared):
            raise RuntimeError(
                f"training consumed nothing from source(s) {missing} (counts {dict(self.counts)}); see {path}"
            )
