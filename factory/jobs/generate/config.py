"""The generation job's configuration, validated at the edge (errors name the field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.config import check
from factory.data.datasets import DatasetConfig
from factory.jobs.executors import ExecutorKind, RayConfig
from factory.jobs.plan import ResumeCheck
from factory.quality import QualityConfig
from factory.shards import ShardConfig
from factory.storage import is_uri, location
from factory.synth.seeds import SEED_BITS
from factory.synth.synthesizer import SynthConfig
from factory.synth.variants import VariantsConfig


@dataclass
class FaultsConfig:
    """Fault drills for tests and rehearsals (all off by default; see ``faults.py``).

    ``oom_above_batch``: a synthesizer call with more items raises ``torch.OutOfMemoryError``.
    ``nan_keys``: these synthetic keys' images are replaced by NaN before the job's checks.
    ``kill_after_items``: the first worker to synthesise this many items SIGKILLs itself (once
      per output folder).
    ``delay_s``: sleep per synthesizer call (time to kill the driver mid-job).
    """

    oom_above_batch: int = 0
    nan_keys: list[str] = field(default_factory=list)
    kill_after_items: int = 0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        check(self.oom_above_batch >= 0, "oom_above_batch", f"must be >= 0, got {self.oom_above_batch}")
        check(self.kill_after_items >= 0, "kill_after_items", f"must be >= 0, got {self.kill_after_items}")
        check(self.delay_s >= 0, "delay_s", f"must be >= 0, got {self.delay_s}")

    @property
    def active(self) -> bool:
        return bool(self.oom_above_batch or self.nan_keys or self.kill_after_items or self.delay_s)


@dataclass
class GenerateConfig:
    """The whole generation job.

    ``synthesizer``: "lumen" (factory.synth's Synthesizer, assembled from ``synth``; a trained
      ControlNet's recorded recipe gives the base model, condition and PCA), or "package.module:f"
      / "path/to/file.py:f" naming a factory ``f(cfg) -> synthesizer`` (custom models, test doubles).
    ``quality``: factory.quality's acceptance thresholds, ``max_attempts`` and the optional
      ``segmenter`` whose label-consistency score is recorded (and gated on with ``min_label_miou``).
    ``executor``: how the stage runs (factory.jobs.executors): a Ray actor pool, Ray Data, or in
      this process without Ray; the shards are the same whichever runs them.
    ``out``: the job's folder (shards/, manifest/, plan.json, the dataset card): a local path,
      or an fsspec URI (``s3://bucket/prefix``, ``gs://...``; factory.storage) that every worker
      writes to.
    ``storage_options``: passed to fsspec for a URI ``out`` (e.g. ``endpoint_url`` of an
      S3-compatible server); credentials belong in the environment (cluster/README.md), and
      secret-looking options are redacted from the dataset card.
    """

    out: Path | str  # a local folder, or an fsspec URI (s3://bucket/prefix) every worker writes to
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    synthesizer: str = "lumen"
    quality: QualityConfig = field(default_factory=QualityConfig)
    seed: int = 0
    samples_per_shard: int = 16
    batch_size: int = 4
    # threads per worker that decode the next batch's references while this batch is synthesised
    load_threads: int = 2
    shards: ShardConfig = field(default_factory=ShardConfig)
    executor: ExecutorKind = "actor_pool"
    ray: RayConfig = field(default_factory=RayConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    contact_sheet_refs: int = 4
    progress: bool = True
    # how a rerun verifies the shards it skips (factory.jobs.plan.verify_shard): "checksums"
    # reads every byte once; "members" reads each part and the tar headers; "size" reads each
    # part's footer and one listing of shards/ (for folders of tens of thousands of shards)
    resume_check: ResumeCheck = "checksums"
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(
            bool(str(self.out).strip()),
            "out",
            "empty path (fix: a folder, or an fsspec URI such as s3://b/run)",
        )
        self.out = location(self.out)  # a str that is not a URI is a local path
        check(
            not self.storage_options or is_uri(self.out),
            "storage_options",
            f"apply to an fsspec URI out (s3://...), and out={self.out} is a local path (fix: drop them)",
        )
        # per-sample seeds and torch generators are signed 64-bit (factory.synth.seeds)
        check(0 <= self.seed < 2**SEED_BITS, "seed", f"must be in 0..2**{SEED_BITS}-1, got {self.seed}")
        check(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.load_threads >= 1, "load_threads", f"must be >= 1, got {self.load_threads}")
        check(
            self.synthesizer != "lumen"
            or self.synth.condition is not None
            or self.synth.controlnet is not None,
            "synth.condition",
            "synthesizer 'lumen' needs a condition: a trained synth.controlnet (its recipe names one) or "
            "synth.condition (e.g. {kind: canny})",
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


__all__ = ["FaultsConfig", "GenerateConfig"]
