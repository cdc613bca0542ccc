"""Which samples each training process used at each step: ``<out>/batches/rank<k>.jsonl``.

Why: under ``accelerate launch`` every process draws its own batch (``batch_indices``), and a
wrong split - two processes on the same samples, or samples no process ever sees - trains
without any error: the loss still falls. The ControlNet trainer therefore writes, always, one
JSON line per optimiser step and process::

    {"step": 5, "indices": [3, 6], "keys": ["aachen_000002_000019", "bremen_000001_000019"]}

``step`` is the step just completed (1-based, as in train_log.jsonl); ``indices`` are positions
in the run's sample list (``list_samples(cfg.data).refs``) over all the step's micro-batches in
order, ``keys`` their sample keys. When ``batch_size x processes`` divides the sample count,
the processes' index sets are disjoint at each step and an epoch's steps cover every sample
exactly once; otherwise an epoch ends mid-step (``batch_indices`` says what that step holds).
It is the ControlNet analogue of downstream SegFormer's consumption audit.

Resume: a killed run may have logged steps after its last checkpoint, which the resumed run
redoes. ``truncate_after`` keeps only the lines up to the resumed step, so every step is listed
once, as by an uninterrupted run; the trainer applies it to train_log.jsonl too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.atomic import atomic_write_text

AUDIT_DIR = "batches"
RANK_FILE_RE = re.compile(r"^rank(\d+)\.jsonl$")


def audit_path(out: Path, rank: int) -> Path:
    """The audit file of process ``rank`` in the run folder ``out``."""
    return Path(out) / AUDIT_DIR / f"rank{rank}.jsonl"


def truncate_after(path: Path, step: int) -> int:
    """Keep the JSON lines of ``path`` whose ``"step"`` is <= ``step`` (atomically); returns how many.

    ``step`` 0 (a run that starts fresh) empties the file. A line that does not parse is a write
    a kill cut short (only the last line can be): it is dropped with the steps being redone.
    """
    if not path.is_file():
        return 0
    kept: list[str] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done = record.get("step") if isinstance(record, dict) else None
        if isinstance(done, int) and done <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


def reset_for_resume(out: Path, step: int) -> None:
    """Truncate every process's audit file to the lines up to ``step``; main process only.

    Every ``rank*.jsonl`` is truncated, not only those of this run's process count: a run resumed
    with fewer processes must not keep a former rank's steps beyond the checkpoint.
    """
    folder = Path(out) / AUDIT_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if RANK_FILE_RE.match(path.name):
                truncate_after(path, step)


class BatchAudit:
    """Appends one line per step to this process's audit file (one small write per step)."""

    def __init__(self, out: Path, rank: int) -> None:
        self.path = audit_path(out, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, step: int, indices: Sequence[int], keys: Sequence[str]) -> None:
        line = json.dumps({"step": step, "indices": [int(i) for i in indices], "keys": list(keys)})
        with self.path.open("a") as f:
            f.write(line + "\n")


def read_batch_audit(out: Path) -> dict[int, list[dict[str, Any]]]:
    """``{rank: [record, ...]}`` in file order, for every process that wrote an audit under ``out``."""
    folder = Path(out) / AUDIT_DIR
    audit: dict[int, list[dict[str, Any]]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if m := RANK_FILE_RE.match(path.name):
                audit[int(m.group(1))] = [json.loads(x) for x in path.read_text().splitlines() if x]
    return audit
