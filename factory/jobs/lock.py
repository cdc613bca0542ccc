"""An exclusive lock on a job's output folder, held by the driver for the whole run.

Why: two drivers on one folder break exactly-once - the second one's resume scan deletes the
first one's temporary files, and two different configs started at the same moment could both
pass the plan check before either wrote ``plan.json``. The lock makes "one job per folder" a
fact instead of a hope.

How: ``fcntl.flock`` on ``<out>/.lock``. The kernel drops the lock when the holding process
dies (SIGKILL included), so a killed job never leaves a lock that blocks its own rerun. flock is
per open file, so it also excludes a second job in the same process. On NFS, Linux implements
flock with the server's byte-range locks (NFSv4 leases: a dead client's lock expires after the
lease, ~90 s); CephFS and GPFS support it; Lustre needs the ``flock`` mount option. A file
system that cannot lock at all fails with an error saying so.

The lock file records its holder (host, pid, start time, job, run id) and a heartbeat the holder
rewrites every ``heartbeat_s``. A second job prints the holder. When the lock is held but the
heartbeat is old (the holder's node died and the file server has not noticed), the error says
the lock looks stale and how to clear it (delete the file: a new file is a new lock).

On an object store (``out=s3://...``) there is no flock: ``ObjectStoreLock`` is the lock there
(``output_lock`` picks the one for a store). Local folders keep ``OutputLock``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from factory.storage import Store

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class OutputLocked(RuntimeError):
    """Another job holds the output folder."""


class OutputLock:
    """``with OutputLock(out, job="generate", run_id=...):`` - exclusive, released on exit."""

    def __init__(self, out: Path, *, job: str, run_id: str = "", heartbeat_s: float = 30.0):
        self.path = Path(out) / LOCK_NAME
        self.job = job
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self._fd: int | None = None
        self._started_at = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLocked(self._held_message()) from None
            raise OutputLocked(
                f"{self.path}: cannot lock the output folder ({e.strerror}); this file system does not "
                "support flock (fix: write the output to a local disk or a file system with locking, "
                "e.g. NFSv4, or mount Lustre with -o flock)"
            ) from e
        self._fd = fd
        previous = _read_holder(self.path)
        if previous and previous.get("pid") and not previous.get("released"):
            log.warning(
                "%s: the previous job (%s pid %s on %s, run %s) ended without releasing its lock; "
                "taking it over",
                self.path, previous.get("job"), previous.get("pid"), previous.get("host"), previous.get("run_id"),
            )  # fmt: skip
        self._started_at = time.time()
        self._write({})
        self._beat = threading.Thread(target=self._heartbeat, name="output-lock", daemon=True)
        self._beat.start()
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self._write({"released": time.time()})
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ holder record
    def _write(self, extra: dict[str, Any]) -> None:
        """Rewrite the holder record in place (the lock is on the open file, not on its name)."""
        assert self._fd is not None
        record = {
            "job": self.job,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self._started_at,
            "heartbeat": time.time(),
            **extra,
        }
        data = json.dumps(record, sort_keys=True).encode()
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write({})
            except OSError as e:  # a full disk must not kill the job over its lock record
                log.warning("%s: heartbeat not written: %s", self.path, e)

    def _held_message(self) -> str:
        holder = _read_holder(self.path) or {}
        who = _holder_text(holder)
        beat = holder.get("heartbeat")
        if isinstance(beat, int | float) and time.time() - beat > 4 * self.heartbeat_s:
            return (
                f"{self.path.parent}: the output folder is locked by {who}, but its lock looks stale: "
                f"the holder last wrote a heartbeat {_ago(beat)} (it rewrites it every {self.heartbeat_s:.0f} s). "
                f"If that job is dead (its node lost), clear the lock with `rm {self.path}` and rerun; "
                "the rerun resumes"
            )
        return (
            f"{self.path.parent}: the output folder is in use by {who}; one job per output folder "
            f"(fix: wait for it to finish, or use another out=). Lock file: {self.path}"
        )


class ObjectStoreLock:
    """The output lock on an object store: the object ``<out>/.lock`` exists while a job holds it.

    Why this design: an object store has no flock and no rename, but S3 has a conditional PUT
    (``If-None-Match: *``: create the object only if there is none; AWS S3 since August 2024,
    s3fs's ``mode="create"``, honoured by moto's server). So:

    - acquire: create ``.lock`` with the holder record (job, run id, host, boot id, pid, start
      time, heartbeat, a token unique to this acquisition). Exactly one of two concurrent jobs
      succeeds. The other reads the record and is refused, naming the holder.
    - heartbeat: every ``heartbeat_s`` the holder re-reads ``.lock`` (still its token?) and
      rewrites it with a new heartbeat. A record whose heartbeat is older than 4 heartbeats
      belongs to a job that is dead or cut off: the refusal says the lock looks stale, and to
      remove the object (nothing removes it by itself: a job that is merely slow to reach the
      store must not lose its lock to a guess).
    - release: delete ``.lock`` (if it still holds our token).
    - a killed job leaves its ``.lock`` behind (no kernel drops it, unlike flock). A rerun on
      the same machine (same host and boot id) whose holder process no longer exists takes the
      lock over at once, with a warning, as the local lock does; the takeover is a second
      conditional create (``.lock.takeover-<token>``), so of two reruns only one takes over.
      Elsewhere the dead job's lock is stale after 4 heartbeats, and the message says how to
      remove it.

    Where the store has no atomic create (``Store.atomic_create`` false: fsspec's create is
    check-then-write for most protocols), or an S3-compatible server ignores ``If-None-Match``
    (detected: a second create of our own lock succeeds), the lock is best effort: written,
    re-read after ``settle_s`` and compared; a warning says two jobs started at the same moment
    could both get it.
    """

    def __init__(
        self, store: Store, *, job: str, run_id: str = "", heartbeat_s: float = 30.0, settle_s: float = 1.0
    ):
        self.store = store
        self.uri = store.where(LOCK_NAME)
        self.job = job
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.settle_s = settle_s
        self._token = ""
        self._takeover: str | None = None
        self._started_at = 0.0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> ObjectStoreLock:
        self._token = uuid.uuid4().hex
        self._started_at = time.time()
        record = self._record()
        if self.store.create(LOCK_NAME, record):
            atomic = self.store.atomic_create and not self.store.create(LOCK_NAME, record)
            if not atomic:
                self._verify_best_effort()
        else:
            holder = self._read() or {}
            if not self._holder_is_dead_here(holder):
                raise OutputLocked(self._held_message(holder))
            self._take_over(holder, record)
        self._beat = threading.Thread(target=self._heartbeat, name="output-lock", daemon=True)
        self._beat.start()
        return self

    def release(self) -> None:
        if not self._token:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            if (self._read() or {}).get("token") == self._token:
                self.store.remove(LOCK_NAME)
            if self._takeover is not None:
                self.store.remove(self._takeover)
        finally:
            self._token = ""

    def __enter__(self) -> ObjectStoreLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ the cases of acquire
    def _verify_best_effort(self) -> None:
        """No atomic create here: wait, re-read, and keep the lock only if it still holds our token."""
        log.warning(
            "%s: this store cannot create an object only if it is absent (fsspec's create is "
            "check-then-write for this protocol, or the server ignores If-None-Match), so the output lock "
            "is best effort (written, re-read after %.1f s and compared): two jobs started on this output "
            "at the same moment could both get it. Start one job per output.",
            self.uri, self.settle_s,
        )  # fmt: skip
        time.sleep(self.settle_s)
        holder = self._read() or {}
        if holder.get("token") != self._token:
            raise OutputLocked(
                f"{self.store.location}: another job took the output lock at the same moment "
                f"({holder.get('job', 'a job')}, run {holder.get('run_id') or '?'} on {holder.get('host', '?')}); "
                f"one job per output (fix: wait for it to finish, or use another out=). Lock object: {self.uri}"
            )

    def _holder_is_dead_here(self, holder: dict[str, Any]) -> bool:
        """The holder ran on this machine (host and boot id) and its process no longer exists."""
        if holder.get("host") != socket.gethostname() or holder.get("boot_id") != _boot_id():
            return False
        pid = holder.get("pid")
        return isinstance(pid, int) and not _pid_alive(pid)

    def _take_over(self, dead: dict[str, Any], record: bytes) -> None:
        """Replace a dead local holder's lock; the conditional create of the takeover marker
        decides between two reruns that both found it dead."""
        marker = f"{LOCK_NAME}.takeover-{dead.get('token', 'unknown')}"
        if not self.store.create(marker, record):
            raise OutputLocked(self._held_message(self._read() or {}))
        current = self._read() or {}
        if current.get("token") != dead.get("token"):  # changed since we read it: not ours to take
            self.store.remove(marker)
            raise OutputLocked(self._held_message(current))
        log.warning(
            "%s: the previous job (%s pid %s on %s, run %s) ended without releasing its lock; "
            "taking it over",
            self.uri, dead.get("job"), dead.get("pid"), dead.get("host"), dead.get("run_id"),
        )  # fmt: skip
        self.store.put_bytes(LOCK_NAME, record)
        self._takeover = marker

    # ------------------------------------------------------------------ holder record
    def _record(self) -> bytes:
        record = {
            "job": self.job,
            "run_id": self.run_id,
            "token": self._token,
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": os.getpid(),
            "started": self._started_at,
            "heartbeat": time.time(),
        }
        return json.dumps(record, sort_keys=True).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.store.read_bytes(LOCK_NAME) or b"null")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read() or {}
                if holder.get("token") != self._token:
                    log.error(
                        "%s: this job no longer holds the output lock (now: %s, run %s on %s); was the "
                        "lock object removed while the job ran? Another job may be writing this output",
                        self.uri, holder.get("job"), holder.get("run_id"), holder.get("host"),
                    )  # fmt: skip
                    return
                self.store.put_bytes(LOCK_NAME, self._record())
            except OSError as e:  # a store hiccup must not kill the job over its lock record
                log.warning("%s: heartbeat not written: %s", self.uri, e)

    def _held_message(self, holder: dict[str, Any]) -> str:
        who = _holder_text(holder)
        beat = holder.get("heartbeat")
        if isinstance(beat, int | float) and time.time() - beat > 4 * self.heartbeat_s:
            return (
                f"{self.store.location}: the output is locked by {who}, but its lock looks stale: the "
                f"holder last wrote a heartbeat {_ago(beat)} (it rewrites it every {self.heartbeat_s:.0f} s). "
                f"If that job is dead (its node lost), remove the lock object {self.uri} (e.g. "
                f"`python -m factory.storage rm {self.uri}` with the job's credentials and endpoint in the "
                "environment, or your store's own tool) and rerun; the rerun resumes"
            )
        return (
            f"{self.store.location}: the output is in use by {who}; one job per output "
            f"(fix: wait for it to finish, or use another out=). Lock object: {self.uri}"
        )


def output_lock(store: Store, *, job: str, run_id: str = "") -> OutputLock | ObjectStoreLock:
    """The lock for a job's output: flock on a local folder, the lock object on an object store."""
    local = store.local_path()
    if local is not None:
        return OutputLock(local, job=job, run_id=run_id)
    return ObjectStoreLock(store, job=job, run_id=run_id)


def _boot_id() -> str:
    """This machine's boot id (Linux): tells two machines with the same host name apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_text(holder: dict[str, Any]) -> str:
    """Who holds a lock, from its record: job, pid, host, run and age (both lock kinds say it so)."""
    return (
        f"{holder.get('job', 'a job')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"run {holder.get('run_id') or '?'}, started {_ago(holder.get('started'))})"
    )


def _ago(t: Any) -> str:
    if not isinstance(t, int | float):
        return "at an unknown time"
    s = max(0.0, time.time() - t)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago"


__all__ = ["LOCK_NAME", "ObjectStoreLock", "OutputLock", "OutputLocked", "output_lock"]
