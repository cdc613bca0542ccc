"""What both Ray jobs share: connecting to Ray, a deterministic shard plan, and an actor pool
driver that survives dead actors.

Why it looks like this:
- A job is a list of shards; a shard is the unit of work, of atomic output and of resume. The
  plan is a pure function of the (sorted) inputs, so shard i always holds the same items and a
  rerun only redoes shards whose manifest part is missing.
- Actors are plain classes wrapped with ``ray.remote`` here (stages never import Ray). Each
  actor loads its models once, then processes whole shards. The driver keeps at most
  ``in_flight_per_actor`` shards queued per actor (backpressure: the object store and the
  driver never hold the whole dataset), and when an actor dies (SIGKILL, node loss) it starts a
  replacement and re-queues every shard that actor had not finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from factory.config import check
from factory.data.datasets import DatasetConfig, list_samples
from factory.data.sample import SampleRef
from factory.shards import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """How the job reaches Ray and how many actors it runs.

    ``address``: None = ``RAY_ADDRESS`` when set (inside ``ray job submit``), else a local Ray
    started in-process. ``num_actors`` 0 = one per GPU, or ``local_cpus`` // ``cpus_per_actor``
    CPU actors when the cluster has no GPU.
    """

    address: str | None = None
    num_actors: int = 0
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0
    in_flight_per_actor: int = 2
    max_actor_restarts: int = 8
    local_cpus: int = 0  # in-process Ray only; 0 = os.cpu_count()

    def __post_init__(self) -> None:
        check(self.num_actors >= 0, "num_actors", f"must be >= 0 (0 = automatic), got {self.num_actors}")
        check(self.cpus_per_actor > 0, "cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        check(self.gpus_per_actor > 0, "gpus_per_actor", f"must be > 0, got {self.gpus_per_actor}")
        check(
            self.in_flight_per_actor >= 1,
            "in_flight_per_actor",
            f"must be >= 1, got {self.in_flight_per_actor}",
        )
        check(
            self.max_actor_restarts >= 0, "max_actor_restarts", f"must be >= 0, got {self.max_actor_restarts}"
        )
        check(self.local_cpus >= 0, "local_cpus", f"must be >= 0, got {self.local_cpus}")


def init_ray(cfg: RayConfig) -> Any:
    """Connect to the cluster (``ray job submit`` sets RAY_ADDRESS) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.local_cpus or os.cpu_count() or 1, include_dashboard=False)
    return ray


@contextmanager
def shutdown_ray_we_started() -> Iterator[None]:
    """Shut down a local Ray that a job's ``run`` started (``init_ray``), however it ends.

    Used as a decorator on each job's ``run``. A job run in-process (the demo, tests, benchmarks)
    must not leave its Ray behind: the next caller would silently reuse a Ray started with other
    options (no dashboard, other CPU count). A Ray that was already running when the job began
    belongs to the caller and stays up.
    """
    import ray

    already = ray.is_initialized()
    try:
        yield
    finally:
        if not already and ray.is_initialized():
            ray.shutdown()


@dataclass
class ActorPlan:
    count: int
    options: dict[str, Any]
    kind: str  # "gpu" | "cpu"


def plan_actors(cfg: RayConfig, n_shards: int) -> ActorPlan:
    """One actor per GPU when the cluster has GPUs, CPU actors otherwise; never more than shards."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus > 0:
        count = cfg.num_actors or max(1, int(gpus // cfg.gpus_per_actor))
        options = {"num_gpus": cfg.gpus_per_actor, "num_cpus": cfg.cpus_per_actor}
        kind = "gpu"
    else:
        cpus = resources.get("CPU", 1)
        count = cfg.num_actors or max(1, int(cpus // cfg.cpus_per_actor))
        options = {"num_cpus": cfg.cpus_per_actor}
        kind = "cpu"
    return ActorPlan(max(1, min(count, n_shards)), options, kind)


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


def load_ahead(
    items: Sequence[Any],
    batch_size: int,
    pool: Executor,
    load: Callable[[Any], Any],
    key: Callable[[Any], str],
) -> Iterator[list[tuple[Any, Any]]]:
    """``items`` in batches of ``batch_size``, each item with ``load(item)``'s result, in order.

    Batch i + 1 is loaded in ``pool`` while the caller computes on batch i, so decoding images
    (OpenCV releases the GIL) overlaps the model. Items of a batch with the same ``key`` share
    one load (a reference's variants share its decoded sample).
    """
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

    def submit(batch: Sequence[Any]) -> dict[str, Future]:
        futures: dict[str, Future] = {}
        for item in batch:
            if key(item) not in futures:
                futures[key(item)] = pool.submit(load, item)
        return futures

    ahead = submit(batches[0]) if batches else {}
    for i, batch in enumerate(batches):
        current, ahead = ahead, (submit(batches[i + 1]) if i + 1 < len(batches) else {})
        yield [(item, current[key(item)].result()) for item in batch]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def split_into_shards(items: Sequence[Any], per_shard: int) -> list[list[Any]]:
    """Consecutive chunks: shard i holds items[i*per_shard:(i+1)*per_shard], always."""
    return [list(items[i : i + per_shard]) for i in range(0, len(items), per_shard)]


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


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PoolStats:
    actors_started: int = 0
    actors_died: int = 0
    shards_done: int = 0
    reassigned: list[str] = field(default_factory=list)


def run_actor_pool(
    actor_cls: Any,
    make_args: Callable[[int], tuple],
    plan: ActorPlan,
    shards: Sequence[tuple[str, Any]],
    *,
    method: str,
    in_flight_per_actor: int,
    max_restarts: int,
    on_result: Callable[[str, Any], int],
    total_items: int,
    desc: str,
) -> PoolStats:
    """Run ``actor.<method>(name, payload)`` for every shard on a pool of actors.

    ``on_result(name, result)`` is called on the driver for each finished shard and returns
    the number of items it completed (for progress). A shard whose actor died is re-queued at
    the front; the dead actor is replaced (at most ``max_restarts`` times in total).
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    remote_cls = ray.remote(**plan.options, max_restarts=0)(actor_cls)
    stats = PoolStats()

    def start(slot: int) -> Any:
        stats.actors_started += 1
        return remote_cls.remote(*make_args(slot))

    actors = [start(i) for i in range(plan.count)]
    pending: deque[tuple[str, Any]] = deque(shards)
    in_flight: dict[Any, tuple[int, Any, str, Any]] = {}  # ref -> (slot, actor, name, payload)
    load = [0] * plan.count
    t0 = time.perf_counter()
    done_items = 0
    bar = tqdm(total=total_items, desc=desc, unit="img", dynamic_ncols=True)
    try:
        while pending or in_flight:
            # 1. Fill every actor up to its in-flight bound (backpressure).
            for slot in range(plan.count):
                while pending and load[slot] < in_flight_per_actor:
                    name, payload = pending.popleft()
                    ref = getattr(actors[slot], method).remote(name, payload)
                    in_flight[ref] = (slot, actors[slot], name, payload)
                    load[slot] += 1
            # 2. Wait for one shard.
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, name, payload = in_flight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                # 3. The actor died: its unfinished shards come back here one by one.
                log.warning(
                    "actor %d died while processing %s (%s); reassigning", slot, name, type(e).__name__
                )
                stats.reassigned.append(name)
                pending.appendleft((name, payload))
                if actors[slot] is actor:  # replace once, not once per lost shard
                    stats.actors_died += 1
                    if stats.actors_died > max_restarts:
                        raise RuntimeError(
                            f"{stats.actors_died} actors died (limit max_actor_restarts={max_restarts}); "
                            f"last error: {e}"
                        ) from e
                    actors[slot] = start(slot)
                continue
            stats.shards_done += 1
            n = on_result(name, result)
            done_items += n
            bar.update(n)
            rate = done_items / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:.2f} img/s, {stats.shards_done}/{len(shards)} shards")
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return stats


__all__ = [
    "ActorPlan",
    "list_references",
    "PoolStats",
    "RayConfig",
    "check_plan",
    "digest",
    "init_ray",
    "shutdown_ray_we_started",
    "plan_actors",
    "run_actor_pool",
    "shard_name",
    "split_into_shards",
]
