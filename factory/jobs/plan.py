"""Planning and resume: pure functions of the inputs, no Ray.

Both jobs have one shape, named here:

1. ``list_references`` - the dataset's references, sorted by key (bad files become planned
   items that will fail with their reason, so the manifest accounts for everything);
2. ``make_tasks`` - consecutive chunks: shard i always holds the same items;
3. ``prepare_output`` - the plan fingerprint is checked against ``plan.json`` (a folder is
   never resumed with other inputs), stale temporaries are removed, and the shards that the
   manifest and the shard folder already hold are skipped;
4. an executor (``factory.jobs.executors``) runs the stage over what is left.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from factory.atomic import atomic_write_bytes
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.sample import SampleRef
from factory.jobs.stage import ShardTask
from factory.shards import Manifest, remove_stale_temporaries

log = logging.getLogger(__name__)

_KEY_FROM_FILE = re.compile(r"^(.+?)_(leftImg8bit|gtFine|disparity|camera|gtBbox3d|rgb_anon|gt_)")


def list_references(cfg: DatasetConfig) -> list[SampleRef]:
    """References sorted by key, including the ones the reader could not list completely.

    A reference with a missing label file is still planned (with ``meta['listing_error']``):
    each of its variants then gets a ``failed`` row naming the file, so the manifest accounts for
    every (reference, variant) and a user sees what to fix. Bad files are never fatal here,
    whatever ``cfg.on_error`` says: a job records them and goes on.
    """
    result = list_samples(replace(cfg, on_error="skip", limit=0))
    refs = {r.key: r for r in result.refs}
    for bad in result.bad:
        m = _KEY_FROM_FILE.match(Path(bad.path).name)
        if not m or m.group(1) in refs:
            log.warning("skipping unlistable file %s: %s", bad.path, bad.reason)
            continue
        refs[m.group(1)] = SampleRef(m.group(1), {"image": Path(bad.path)}, {"listing_error": bad.reason})
    ordered = [refs[k] for k in sorted(refs)]
    return ordered[: cfg.limit] if cfg.limit else ordered


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def make_tasks(items: Sequence[Any], per_shard: int) -> list[ShardTask]:
    """Consecutive chunks: shard i holds items[i*per_shard:(i+1)*per_shard], always."""
    return [
        ShardTask(shard_name(i // per_shard), tuple(items[i : i + per_shard]))
        for i in range(0, len(items), per_shard)
    ]


def check_plan(out: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume into an output folder that was planned with different inputs/settings.

    Shard contents are defined by the plan; mixing two plans in one folder would break
    "exactly one sample per (reference, variant)". The first run writes ``plan.json``.
    """
    path = out / "plan.json"
    text = json.dumps(fingerprint, sort_keys=True, indent=1)
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(text):
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise RuntimeError(
                f"{path}: this output folder was planned with different settings ({', '.join(changed)} "
                "changed); resuming would mix two jobs (fix: use a new output folder, or restore the "
                "original config)"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


@dataclass
class OutputPlan:
    """Where a job stands: every shard of the plan, and the ones still to do."""

    out: Path
    tasks: list[ShardTask]
    todo: list[ShardTask]

    @property
    def skipped(self) -> int:
        return len(self.tasks) - len(self.todo)


def prepare_output(out: Path, fingerprint: dict[str, Any], tasks: Sequence[ShardTask]) -> OutputPlan:
    """Check the plan, clear stale temporaries, and keep the shards that are not done yet.

    A shard is done when its manifest part exists and its tar is in ``out/shards``.
    """
    check_plan(out, fingerprint)
    manifest = Manifest(out / "manifest")
    for folder in (out / "shards", manifest.folder):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
    done = manifest.done_shards()
    todo = [t for t in tasks if t.name not in done or not (out / "shards" / f"{t.name}.tar").exists()]
    log.info("%d shards planned; %d already done", len(tasks), len(tasks) - len(todo))
    return OutputPlan(out, list(tasks), todo)


__all__ = [
    "OutputPlan",
    "check_plan",
    "list_references",
    "make_tasks",
    "prepare_output",
    "shard_name",
]
