"""Shared by the real-cluster tests: free ports, short temp folders, the environment of a head.

A head these tests start binds 127.0.0.1 only and gets a free port for every server it runs, so
the heads of parallel test sessions (and other Ray instances on the machine) never meet.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the environment running the tests (its `ray` CLI, its packages)
RAY = Path(sys.executable).with_name("ray")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

sys.path.insert(0, str(REPO / "cluster"))
import local_head  # noqa: E402, F401  (cluster/local_head.py: what `make cluster-up/down` run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp_dir(prefix: str) -> Path:
    """A fresh folder under /tmp: Ray's unix socket paths inside it must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def port_flags() -> list[str]:
    """`ray start` flags giving every server of a head a free port (the defaults are fixed)."""
    names = [
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
        "--node-manager-port",
        "--object-manager-port",
    ]
    return [f"{name}={free_port()}" for name in names]


def head_env(token: Path, **extra: str) -> dict[str, str]:
    """The environment `make cluster-up` gives a head: token auth, this venv first on PATH, a
    one-machine Ray (node address 127.0.0.1), free ports for the two metrics servers whose
    default ports are fixed (44217, 44227), no RAY_ADDRESS."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
        **extra,
    }
    env.pop("RAY_ADDRESS", None)
    return env


def listening(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every TCP socket the processes listen on."""
    found = []
    for p in procs:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((p.pid, p.name(), c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found
