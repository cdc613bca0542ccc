"""Executors: the only code in factory/ that imports Ray.

An executor runs a ``ShardStage`` (factory.jobs.stage) over shard tasks and hands each
finished shard's result to the driver's ``on_result``. Three, one interface, chosen by the
job config's ``executor`` field:

- ``in_process``: no Ray; one stage in this process (tests, benchmarks, debugging).
- ``actor_pool``: a pool of Ray actors, one per GPU (CPU actors on a cluster without GPUs).
  The driver keeps at most ``in_flight_per_actor`` shards queued per actor (backpressure: the
  object store and the driver never hold the whole dataset); when an actor dies (SIGKILL, node
  loss) it starts a replacement and re-queues every shard that actor had not finished.
- ``ray_data``: ``ray.data`` ``map_batches`` over the shard tasks with an actor pool strategy
  and the stage's declared CPUs/GPUs - the pattern Ray recommends for GPU batch inference, so a
  Ray Data cluster runs the factory as it is. Ray Data retries a task whose actor died.

A stage whose ``setup`` raises (a missing model folder, a bad checkpoint) stops the run at once,
on every executor, with that exception: its type and message, and the worker's traceback. It is
never treated as a dead actor, because a replacement would fail the same way after loading the
same models again. Only an actor that really died is replaced.

Ray is reached at the address the config or ``RAY_ADDRESS`` names; without one, ``init_ray``
starts a private Ray for this driver and never attaches to a cluster it happens to find.

Exactly-once does not depend on the executor: a stage writes each shard atomically and
deterministically from the plan, and resume skips shards whose manifest part exists, so a
shard processed twice (a retry) is rewritten with the same bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm import tqdm

from factory.config import check
from factory.jobs.stage import ShardStage, ShardTask, items_done

log = logging.getLogger(__name__)

ExecutorKind = Literal["actor_pool", "ray_data", "in_process"]
EXECUTORS: tuple[str, ...] = ("actor_pool", "ray_data", "in_process")


@dataclass
class RayConfig:
    """How the job reaches Ray and how many workers it runs.

    ``address``: None = ``RAY_ADDRESS`` when set (inside ``ray job submit``), else a private
    local Ray started in-process (never another Ray found on the machine). ``num_actors`` 0 = one
    per GPU, or ``local_cpus`` // ``cpus_per_actor`` CPU actors when the cluster has no GPU.
    ``cpus_per_actor`` / ``gpus_per_actor`` are the resources each stage worker declares.
    ``max_actor_restarts``: how many dead actors (killed, node lost) the actor pool replaces in
    total; a stage whose ``setup`` raises is never restarted.
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


# --------------------------------------------------------------------------------------------
# Connecting to Ray
# --------------------------------------------------------------------------------------------


def init_ray(cfg: RayConfig) -> Any:
    """Connect to the cluster ``cfg.address`` or RAY_ADDRESS names (``ray job submit`` sets it),
    or, with neither, start a private local Ray.

    The private Ray is started with ``address="local"``. Ray's default (no address) is to look
    for a cluster: it attaches to the last one ``ray start`` recorded on this machine (the file
    ``ray_current_cluster`` in Ray's temp folder, still there when that cluster is long gone),
    then refuses the ``num_cpus`` we pass it. A job run in-process must neither land on someone
    else's cluster nor fail because one exists; ``"local"`` always starts a new instance, owned by
    this driver (``shutdown_ray_we_started`` stops it).
    """
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.local_cpus or os.cpu_count() or 1, include_dashboard=False)
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


# --------------------------------------------------------------------------------------------
# Shared by the executors
# --------------------------------------------------------------------------------------------


@dataclass
class WorkerPlan:
    """How many workers of a stage, with which Ray resources (``kind`` gpu | cpu | in_process)."""

    count: int
    options: dict[str, Any]
    kind: str


@dataclass
class RunStats:
    """What happened while a stage ran: workers started and lost, shards redone."""

    plan: WorkerPlan
    workers_started: int = 0
    workers_died: int = 0
    shards_done: int = 0
    reassigned: list[str] = field(default_factory=list)


def plan_workers(stage: ShardStage, cfg: RayConfig, n_shards: int) -> WorkerPlan:
    """One worker per GPU when the cluster has GPUs and the stage wants them, CPU workers
    otherwise; never more workers than shards."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    want = stage.resources
    if gpus > 0 and want.gpus > 0:
        count = cfg.num_actors or max(1, int(gpus // want.gpus))
        options = {"num_gpus": want.gpus, "num_cpus": want.cpus}
        kind = "gpu"
    else:
        cpus = resources.get("CPU", 1)
        count = cfg.num_actors or max(1, int(cpus // want.cpus))
        options = {"num_cpus": want.cpus}
        kind = "cpu"
    return WorkerPlan(max(1, min(count, n_shards)), options, kind)


class _Progress:
    """A tqdm bar in images with the rate and the shard count."""

    def __init__(self, tasks: Sequence[ShardTask], desc: str):
        self.n_shards = len(tasks)
        self.bar = tqdm(total=sum(len(t) for t in tasks), desc=desc, unit="img", dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.items = 0
        self.shards = 0

    def update(self, n: int) -> None:
        self.items += n
        self.shards += 1
        self.bar.update(n)
        rate = self.items / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{rate:.2f} img/s, {self.shards}/{self.n_shards} shards")

    def close(self) -> None:
        self.bar.close()


OnResult = Callable[[ShardTask, Any], None]


def run_stage(
    stage: ShardStage,
    tasks: Sequence[ShardTask],
    *,
    executor: str,
    ray_cfg: RayConfig,
    on_result: OnResult,
    desc: str,
) -> RunStats:
    """Run ``stage`` over ``tasks`` with the named executor; ``on_result(task, result)`` on the
    driver for every finished shard (in completion order)."""
    if executor == "in_process":
        return run_in_process(stage, tasks, on_result=on_result, desc=desc)
    init_ray(ray_cfg)
    if executor == "actor_pool":
        return run_actor_pool(stage, tasks, ray_cfg, on_result=on_result, desc=desc)
    if executor == "ray_data":
        return run_ray_data(stage, tasks, ray_cfg, on_result=on_result, desc=desc)
    raise ValueError(f"executor {executor!r} is not one of {list(EXECUTORS)}")


# --------------------------------------------------------------------------------------------
# In-process
# --------------------------------------------------------------------------------------------


def run_in_process(
    stage: ShardStage, tasks: Sequence[ShardTask], *, on_result: OnResult, desc: str
) -> RunStats:
    """The stage in this process: ``setup`` once, every shard in order, ``teardown``."""
    stats = RunStats(WorkerPlan(1, {}, "in_process"), workers_started=1)
    progress = _Progress(tasks, desc)
    stage.setup()
    try:
        for task in tasks:
            result = stage.process_shard(task)
            stats.shards_done += 1
            on_result(task, result)
            progress.update(items_done(result, task))
    finally:
        progress.close()
        stage.teardown()
    return stats


# --------------------------------------------------------------------------------------------
# Ray actor pool
# --------------------------------------------------------------------------------------------


class _StageWorker:
    """A stage inside a Ray actor (or a Ray Data actor): set up once, then one call per shard."""

    def __init__(self, stage: ShardStage):
        self.stage = stage
        stage.setup()

    def pid(self) -> int:
        return os.getpid()

    def process(self, task: ShardTask) -> Any:
        return self.stage.process_shard(task)


def _worker_class(stage: ShardStage, base: type[_StageWorker] = _StageWorker) -> type:
    """The actor class, named after the stage's class (what Ray's state API and dashboard show)."""
    return type(type(stage).__name__, (base,), {"__module__": __name__})


def _setup_error(error: BaseException) -> BaseException | None:
    """The stage's own ``setup`` exception when ``error`` says a worker's constructor raised;
    None when the worker died some other way (killed, out of memory, node lost).

    Ray reports both as ``ActorDiedError``; only a constructor that raised sets
    ``actor_init_failed``, and that error carries the constructor's ``RayTaskError`` as its
    argument (Ray 2.60; if a version does not, the run still stops, with Ray's message).
    ``as_instanceof_cause`` turns it into an exception of the stage's own type (``except
    FileNotFoundError`` catches it) whose message holds the worker's traceback.
    """
    from ray.exceptions import RayActorError, RayTaskError

    if not (isinstance(error, RayActorError) and error.actor_init_failed):
        return None
    cause = next((a for a in error.args if isinstance(a, RayTaskError)), None)
    if cause is None:  # Ray did not pass the constructor's error on: still not worth a retry
        return RuntimeError(f"a stage worker's setup failed: {error}")
    return cause.as_instanceof_cause()


def run_actor_pool(
    stage: ShardStage,
    tasks: Sequence[ShardTask],
    cfg: RayConfig,
    *,
    on_result: OnResult,
    desc: str,
) -> RunStats:
    """Every task on a pool of actors with backpressure; dead actors replaced, work re-queued.

    A shard whose actor died is re-queued at the front; the dead actor is replaced (at most
    ``max_actor_restarts`` times in total). An actor whose stage ``setup`` raised is not dead:
    its error is raised here at once (a replacement would load the same models and fail again).
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    plan = plan_workers(stage, cfg, len(tasks))
    log.info("starting %d %s actor(s) with %s", plan.count, plan.kind, plan.options)
    # ray.remote's overloads do not type a class decorated with options: an actor class handle
    remote_cls: Any = ray.remote(**plan.options, max_restarts=0)(_worker_class(stage))
    stats = RunStats(plan)

    def start() -> Any:
        stats.workers_started += 1
        return remote_cls.remote(stage)

    actors = [start() for _ in range(plan.count)]
    pending: deque[ShardTask] = deque(tasks)
    in_flight: dict[Any, tuple[int, Any, ShardTask]] = {}  # ref -> (slot, actor, task)
    load = [0] * plan.count
    progress = _Progress(tasks, desc)
    try:
        while pending or in_flight:
            # 1. Fill every actor up to its in-flight bound (backpressure).
            for slot in range(plan.count):
                while pending and load[slot] < cfg.in_flight_per_actor:
                    task = pending.popleft()
                    in_flight[actors[slot].process.remote(task)] = (slot, actors[slot], task)
                    load[slot] += 1
            # 2. Wait for one shard.
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, task = in_flight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                # 3. The stage's setup raised in the actor's constructor: stop with that error.
                setup_error = _setup_error(e)
                if setup_error is not None:
                    log.error("actor %d: %s setup failed; stopping the run", slot, stage.name)
                    raise setup_error from None  # the error holds the worker's traceback
                # 4. The actor died: its unfinished shards come back here one by one.
                log.warning(
                    "actor %d died while processing %s (%s); reassigning", slot, task.name, type(e).__name__
                )
                stats.reassigned.append(task.name)
                pending.appendleft(task)
                if actors[slot] is actor:  # replace once, not once per lost shard
                    stats.workers_died += 1
                    if stats.workers_died > cfg.max_actor_restarts:
                        raise RuntimeError(
                            f"{stats.workers_died} actors died (limit max_actor_restarts="
                            f"{cfg.max_actor_restarts}); last error: {e}"
                        ) from e
                    actors[slot] = start()
                continue
            stats.shards_done += 1
            on_result(task, result)
            progress.update(items_done(result, task))
    finally:
        progress.close()
        for a in actors:
            ray.kill(a)
    return stats


# --------------------------------------------------------------------------------------------
# Ray Data
# --------------------------------------------------------------------------------------------


class _RayDataWorker(_StageWorker):
    """``map_batches`` UDF: one row = one shard task; returns its name and the stage's result."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = [self.process(task) for task in batch["task"]]
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"name": np.array([t.name for t in batch["task"]]), "result": out}


def run_ray_data(
    stage: ShardStage,
    tasks: Sequence[ShardTask],
    cfg: RayConfig,
    *,
    on_result: OnResult,
    desc: str,
) -> RunStats:
    """``ray.data.from_items(tasks).map_batches(stage worker, ActorPoolStrategy(size=n))``,
    one task per batch, results streamed back to the driver as shards finish.

    The stage's ``setup`` runs in the UDF's constructor. Ray Data can retry a constructor that
    raised, in the same actor or in fresh ones (``DataContext.actor_init_retry_on_errors``,
    ``max_consecutive_actor_init_deaths``, also set from the environment); both are pinned off
    here so a setup error ends the run on its first occurrence, with the stage's own exception.
    The cost: an actor killed during setup also ends the run (Ray Data cannot tell the two apart
    there); a rerun resumes.
    """
    import ray
    import ray.data

    plan = plan_workers(stage, cfg, len(tasks))
    log.info("Ray Data: %d %s actor(s) with %s", plan.count, plan.kind, plan.options)
    by_name = {t.name: t for t in tasks}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts images, not rows
    ctx.actor_init_retry_on_errors = False  # a setup error happens again: never retry it
    ctx.max_consecutive_actor_init_deaths = 0
    # one block per task, up to a bound (a million-shard plan must not become a million blocks)
    blocks = min(len(tasks), 1024)
    ds: ray.data.Dataset = ray.data.from_items([{"task": t} for t in tasks], override_num_blocks=blocks)
    ds = ds.map_batches(
        _worker_class(stage, _RayDataWorker),
        fn_constructor_args=(stage,),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.count),
        **plan.options,
    )
    stats = RunStats(plan, workers_started=plan.count)
    progress = _Progress(tasks, desc)
    try:
        for row in ds.iter_rows():
            task = by_name[str(row["name"])]
            stats.shards_done += 1
            on_result(task, row["result"])
            progress.update(items_done(row["result"], task))
    except Exception as e:
        setup_error = _setup_error(e)
        if setup_error is None:
            raise
        log.error("Ray Data: %s setup failed; stopping the run", stage.name)
        raise setup_error from None  # the error holds the worker's traceback
    finally:
        progress.close()
    return stats


__all__ = [
    "EXECUTORS",
    "ExecutorKind",
    "RayConfig",
    "RunStats",
    "WorkerPlan",
    "init_ray",
    "plan_workers",
    "run_actor_pool",
    "run_in_process",
    "run_ray_data",
    "run_stage",
    "shutdown_ray_we_started",
]
