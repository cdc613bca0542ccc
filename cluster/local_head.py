"""The Makefile's local Ray head (`make cluster-up`, `make cluster-down`): one process we own.

    python cluster/local_head.py up CLUSTER_DIR --temp-dir DIR -- [ray start flags]
    python cluster/local_head.py down CLUSTER_DIR

The Makefile passes the token and Ray settings in the environment (RAY_AUTH_*, ...) and the
flags that bind the head to 127.0.0.1. Why a helper rather than `ray start --head` and `ray stop`:

- `ray stop` finds Ray processes by name and stops every one on the machine: another user's
  cluster, a test session's Ray, the private Ray of a job running in-process. `down` stops
  only the processes of the head that `up` started.
- `ray start --head` detaches the processes it starts and forgets them. With `--block` it stays
  in the foreground as their owner, and on SIGTERM drains the node and stops GCS, raylet,
  dashboard and workers itself. `up` runs it in a session of its own and records its pid and
  start time in CLUSTER_DIR/head.json; a recycled pid has another start time, so `down` never
  signals a stranger.
- `down` sends SIGTERM to that one process, not to its process group: Ray gives workers and job
  drivers process groups of their own, and a GCS signalled together with its owner leaves the
  owner's drain waiting 30 s for a GCS that is gone. Whatever of the head's process tree (as
  it was just before the signal) outlives a grace period is killed.

No Ray import here: this only starts and stops processes (factory/ keeps Ray in one module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

RECORD = "head.json"
LOG = "head.log"


@dataclass
class Head:
    """The recorded `ray start --block` process: identity (pid + start time) and where it lives."""

    pid: int
    create_time: float
    temp_dir: str
    log: str

    def process(self) -> psutil.Process | None:
        """The live process, or None when it has exited (or its pid now names another process)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) < 0.01 and proc.is_running():
                return proc
        except psutil.NoSuchProcess:
            pass
        return None


def read_head(cluster_dir: Path) -> Head | None:
    record = cluster_dir / RECORD
    return Head(**json.loads(record.read_text())) if record.exists() else None


def _log_tail(path: str | Path, n: int = 40) -> str:
    lines = Path(path).read_text(errors="replace").splitlines() if Path(path).exists() else []
    return "\n".join(lines[-n:])


def start(
    cluster_dir: Path,
    temp_dir: Path,
    ray_args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180,
) -> Head:
    """Start `ray start --head --block --temp-dir=temp_dir <ray_args>` detached, record it, and
    return once it is up: when `ray start` has written the cluster address into ``temp_dir``
    (it does so after every head process has started)."""
    cluster_dir.mkdir(parents=True, exist_ok=True)
    running = read_head(cluster_dir)
    if running is not None and running.process() is not None:
        raise SystemExit(f"a head started from {cluster_dir} is running (pid {running.pid}): stop it first")
    temp_dir.mkdir(parents=True, exist_ok=True)
    address_file = temp_dir / "ray_current_cluster"
    address_file.unlink(missing_ok=True)  # a previous head's: we wait for this head's
    log = cluster_dir / LOG
    ray = Path(sys.executable).with_name("ray")  # the Ray of the environment running this script
    cmd = [str(ray), "start", "--head", "--block", f"--temp-dir={temp_dir}", *ray_args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this script and the make that ran it
        )
    head = Head(proc.pid, psutil.Process(proc.pid).create_time(), str(temp_dir), str(log))
    (cluster_dir / RECORD).write_text(json.dumps(asdict(head)) + "\n")
    deadline = time.time() + timeout_s
    while not address_file.exists():
        if proc.poll() is not None:
            (cluster_dir / RECORD).unlink(missing_ok=True)
            raise SystemExit(f"ray start exited with {proc.returncode}:\n{_log_tail(log)}")
        if time.time() > deadline:
            stop(cluster_dir)
            raise SystemExit(f"the Ray head was not up within {timeout_s:.0f} s:\n{_log_tail(log)}")
        time.sleep(0.5)
    return head


def stop(cluster_dir: Path, *, grace_s: float = 60) -> int:
    """Stop the head recorded in ``cluster_dir`` and every process it started; returns how many
    processes were still alive when it began (0: nothing was running)."""
    head = read_head(cluster_dir)
    proc = head.process() if head is not None else None
    if proc is None:
        (cluster_dir / RECORD).unlink(missing_ok=True)
        return 0
    tree = [proc, *proc.children(recursive=True)]
    proc.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    (cluster_dir / RECORD).unlink(missing_ok=True)
    return len(tree)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after `--` goes to `ray start` as is (argparse subcommands mishandle `--`)
    ray_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the head (ray start --head --block ...) and wait until it is up")
    up.add_argument("cluster_dir", type=Path)
    up.add_argument(
        "--temp-dir", type=Path, required=True, help="Ray's temp dir (keep it short: unix sockets)"
    )
    down = sub.add_parser("down", help="stop the head recorded in CLUSTER_DIR and what it started")
    down.add_argument("cluster_dir", type=Path)
    down.add_argument("--grace-s", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "up":
        head = start(args.cluster_dir, args.temp_dir, ray_args, env=os.environ)
        print(f"Ray head up (pid {head.pid}, log {head.log}); stop it with `make cluster-down`")
    else:
        n = stop(args.cluster_dir, grace_s=args.grace_s)
        print(f"stopped the Ray head of {args.cluster_dir} ({n} processes)" if n else "no Ray head running")


if __name__ == "__main__":
    main()
