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
from pathlib import Path
from types import TracebackType
from typing import Any

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
        who = (
            f"{holder.get('job', 'a job')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"run {holder.get('run_id') or '?'}, started {_ago(holder.get('started'))})"
        )
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


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ago(t: Any) -> str:
    if not isinstance(t, int | float):
        return "at an unknown time"
    s = max(0.0, time.time() - t)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago"


__all__ = ["LOCK_NAME", "OutputLock", "OutputLocked"]
