"""Planning and resume: pure functions of the inputs, no Ray.

Both jobs have one shape, named here:

1. ``list_references`` - the dataset's references, sorted by key (bad files become planned
   items that will fail with their reason, so the manifest accounts for everything);
2. ``make_tasks`` - consecutive chunks: shard i always holds the same items;
3. ``prepare_output`` - the plan fingerprint is checked against ``plan.json`` (a folder is
   never resumed with other inputs), stale temporaries are removed, and the shards that are
   verifiably complete (``verify_shard``) are skipped; anything else is redone from scratch;
4. an executor (``factory.jobs.executors``) runs the stage over what is left.

The driver holds the output folder's lock (``factory.jobs.lock``) around all of it. The output
is a ``factory.storage.Store``: a local folder or a prefix on an object store (``s3://...``);
every function here takes either, or a path / URI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from factory.atomic import digest
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.members import member_name
from factory.data.sample import SampleRef, check_key
from factory.jobs.stage import ShardTask
from factory.shards import Manifest, remove_stale_temporaries
from factory.shards.manifest import keys_digest
from factory.storage import Location, Store, open_store

# How a rerun verifies the shards it skips, cheapest first (verify_shard): "size" reads each
# part's footer and one listing of the tars; "members" reads each part and the tar headers;
# "checksums" reads every byte. docs/benchmarks.md "Resume check" has the costs.
ResumeCheck = Literal["size", "members", "checksums"]
RESUME_CHECKS: tuple[ResumeCheck, ...] = ("size", "members", "checksums")

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
        key = _safe_key(m.group(1))
        refs[key] = SampleRef(key, {"image": Path(bad.path)}, {"listing_error": bad.reason})
    ordered = [refs[k] for k in sorted(refs)]
    return ordered[: cfg.limit] if cfg.limit else ordered


def _safe_key(stem: str) -> str:
    """A key for the failed rows of a file whose stem cannot be a key (a space, a dot): the
    stem with unsafe characters replaced, plus a digest of the stem so it cannot collide with a
    real key. The row's reason names the file and says to rename it."""
    try:
        return check_key(stem)
    except ValueError:
        return f"{re.sub(r'[^A-Za-z0-9_-]', '-', stem)}-unsafe{digest(stem, 8)}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def make_tasks(items: Sequence[Any], per_shard: int) -> list[ShardTask]:
    """Consecutive chunks: shard i holds items[i*per_shard:(i+1)*per_shard], always."""
    return [
        ShardTask(shard_name(i // per_shard), tuple(items[i : i + per_shard]))
        for i in range(0, len(items), per_shard)
    ]


class PlanMismatch(RuntimeError):
    """The output folder was planned with other inputs or settings (resuming would mix jobs)."""


def check_plan(out: Store | Location, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume into an output folder that was planned with different inputs/settings.

    Shard contents are defined by the plan; mixing two plans in one folder would break
    "exactly one sample per (reference, variant)". The first run writes ``plan.json``.
    """
    store = open_store(out)
    path = store.where("plan.json")
    text = json.dumps(fingerprint, sort_keys=True, indent=1)
    if store.size("plan.json") is not None:
        old = json.loads(store.read_bytes("plan.json"))
        if old == json.loads(text):
            return
        if _produced_anything(store):
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise PlanMismatch(
                f"{path}: this output folder was planned with different settings ({', '.join(changed)} "
                "changed); resuming would mix two jobs (fix: use a new output folder, or restore the "
                "original config)"
            )
        # e.g. a run whose workers could not load their models: nothing to protect, and the new
        # plan must be the one written, or the next rerun would be held to the old one
        log.warning("%s: replacing the plan of a run that produced nothing", path)
    store.put_bytes("plan.json", text.encode())


def _produced_anything(out: Store) -> bool:
    """Whether a folder holds any committed output (a manifest part or a shard)."""
    return bool(Manifest(out.child("manifest")).parts()) or any(
        n.endswith(".tar") for n in out.listdir("shards")
    )


# read-ahead of a remote tar when only its headers are read ("members"): a header is 512 bytes,
# so a small block costs one short ranged GET per member instead of fetching the data
_HEADER_BLOCK = 64 * 1024


def verify_shard(
    out: Store | Location,
    task: ShardTask,
    check: ResumeCheck = "checksums",
    tar_sizes: dict[str, int] | None = None,
) -> str:
    """Why shard ``task`` is not verifiably complete in ``out``; "" when it is.

    Complete means: its manifest part parses, has a final row for every item the plan puts in
    the shard and names no other shard; its tar is a plain (uncompressed) tar whose members are
    exactly the ones the part's accepted rows list; and (``check="checksums"``) every member's
    sha256 is the one recorded. Anything else - a corrupt or empty part, a truncated tar, a tar
    of another run - is redone from scratch by the caller.

    Cost: "members" reads the tar headers only (one 512-byte block per member); "checksums"
    reads every byte of the shard once (sha256 runs at ~1-2 GB/s per core; the driver checks
    shards in parallel threads, so the scan is bounded by the disk: docs/reliability.md).

    On an object store each header read is a round trip (one short ranged GET per member), so
    the tar's size - one metadata request - is compared first with the size its part records
    (``TAR_BYTES``): a cut or replaced tar is redone without reading it. A local disk reads
    the headers about as cheaply as it answers the size, so there the member check decides.

    "size" (for folders of tens of thousands of shards) reads neither the tar nor the part's
    rows: the part's footer must record the digest of exactly the planned keys and the tar's
    size, and the tar must have that size (from ``tar_sizes``, one listing of ``shards/`` for
    the whole folder, or one request). It trusts what the commit order guarantees - a part is
    written only after its complete tar - and misses a tar rewritten with other bytes of the
    same length; a part written before the footer recorded both falls back to "members".
    """
    store = open_store(out)
    manifest = Manifest(store.child("manifest"))
    part_name = manifest.part_name(task.name)
    tar_name = f"{task.name}.tar"
    shards = store.child("shards")
    if check == "size":
        try:
            footer = manifest.read_footer(task.name)
        except Exception as e:  # pyarrow raises several types for a damaged file
            return f"manifest part {part_name} is unreadable ({type(e).__name__}: {e})"
        if footer.keys_sha256 is not None and footer.tar_bytes is not None:
            if footer.keys_sha256 != keys_digest(item.key for item in task.items):
                return f"manifest part {part_name} records other keys than the {len(task.items)} planned"
            size = tar_sizes.get(tar_name) if tar_sizes is not None else shards.size(tar_name)
            if size is None:
                return f"{tar_name} is missing"
            if size != footer.tar_bytes:
                return f"{tar_name} is {size} bytes, its manifest part records {footer.tar_bytes} (cut short or replaced)"
            return ""
        check = "members"  # an older part: verify it the way it was verified when written
    try:
        rows, recorded_bytes = manifest.read_rows(task.name)
    except Exception as e:  # pyarrow raises several types for a damaged file
        return f"manifest part {part_name} is unreadable ({type(e).__name__}: {e})"
    planned = {item.key for item in task.items}
    listed = {r["key"] for r in rows}
    if listed != planned:
        return (
            f"manifest part {part_name} lists {len(listed & planned)} of the {len(planned)} planned samples"
            + (f" and {len(listed - planned)} that are not in the plan" if listed - planned else "")
        )
    others = {r["shard"] for r in rows} - {task.name}
    if others:
        return f"manifest part {part_name} has rows of shard {sorted(others)[0]}"
    expected = {
        member_name(r["key"], suffix): sha
        for r in rows
        if r["status"] == "ok"
        for suffix, sha in r["checksums"].items()
    }
    size = shards.size(tar_name)
    if size is None:
        return f"{tar_name} is missing"
    remote = store.local_path() is None
    if remote and recorded_bytes is not None and size != recorded_bytes:
        return (
            f"{tar_name} is {size} bytes, its manifest part records {recorded_bytes} (cut short or replaced)"
        )
    found: dict[str, str] = {}
    block = _HEADER_BLOCK if remote and check == "members" else None
    try:
        # "r:" = uncompressed only: a compressed file under a .tar name is not ours
        with shards.open(tar_name, block_size=block) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    return f"{tar_name} holds {member.name}, which is not a regular file"
                found[member.name] = _member_sha256(tar, member) if check == "checksums" else ""
    except (tarfile.TarError, OSError, EOFError) as e:
        return f"{tar_name} is unreadable (truncated?): {e}"
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        return f"{tar_name} holds {len(found)} members, its manifest part lists {len(expected)}" + (
            f" (missing {missing[0]})" if missing else f" (unexpected {extra[0]})"
        )
    if check == "checksums":
        bad = sorted(name for name, sha in expected.items() if found[name] != sha)
        if bad:
            return f"{tar_name}: {len(bad)} member(s) differ from their recorded sha256, e.g. {bad[0]}"
    return ""


def _member_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    if f is None:
        raise tarfile.ReadError(f"cannot read member {member.name}")
    h = hashlib.sha256()
    got = 0
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
        got += len(block)
    if got != member.size:  # a tar cut inside this member
        raise tarfile.ReadError(f"member {member.name} is truncated ({got} of {member.size} bytes)")
    return h.hexdigest()


@dataclass
class OutputPlan:
    """Where a job stands: every shard of the plan, the ones still to do, and the shards that
    looked done but did not verify (name -> why; they are in ``todo`` too)."""

    out: Location
    tasks: list[ShardTask]
    todo: list[ShardTask]
    redone: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.tasks) - len(self.todo)


def prepare_output(
    out: Store | Location,
    fingerprint: dict[str, Any],
    tasks: Sequence[ShardTask],
    check: ResumeCheck = "checksums",
    threads: int = 8,
) -> OutputPlan:
    """Check the plan, clear stale temporaries, and keep the shards that are not done yet.

    A shard is done when it verifies (``verify_shard``). A shard with a manifest part that does
    not verify has its part removed first (the part is the completion mark, so the folder never
    claims a shard it does not hold) and is redone; the job logs which and why.
    """
    store = open_store(out)
    check_plan(store, fingerprint)
    manifest = Manifest(store.child("manifest"))
    local = store.local_path()
    if local is not None:  # an object store holds no temporaries (factory.storage)
        for folder in (local / "shards", local / "manifest"):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
    marked = manifest.done_shards()
    candidates = [t for t in tasks if t.name in marked]
    tar_sizes = store.child("shards").sizes() if check == "size" else None  # one listing
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="verify") as pool:
        reasons = list(pool.map(lambda t: verify_shard(store, t, check, tar_sizes), candidates))
    redone = {t.name: why for t, why in zip(candidates, reasons) if why}
    for name, why in sorted(redone.items()):
        log.warning("shard %s will be redone: %s", name, why)
        manifest.remove_part(name)
    done = {t.name for t in candidates} - set(redone)
    todo = [t for t in tasks if t.name not in done]
    log.info("%d shards planned; %d already done (verified: %s)", len(tasks), len(done), check)
    return OutputPlan(local if local is not None else store.location, list(tasks), todo, redone)


__all__ = [
    "OutputPlan",
    "PlanMismatch",
    "RESUME_CHECKS",
    "ResumeCheck",
    "check_plan",
    "list_references",
    "make_tasks",
    "prepare_output",
    "shard_name",
    "verify_shard",
]
