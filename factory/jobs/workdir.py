"""Relative paths under ``ray job submit --working-dir``: refused with the fix, before any work.

Why: Ray runs a submitted job's driver in an uploaded copy of the working dir
(``.../runtime_resources/working_dir_files/<package>/``). Git-ignored files (``data/``,
``outputs/``) are not uploaded, and Ray deletes the copy after the job. So a relative input
path that is not in the copy points nowhere, and a relative output would be written into a
temporary folder on one node and lost. Both are stopped here with an error that names the
field, the copy and the absolute path to pass instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from factory.config import ConfigError, path_fields
from factory.models import is_local_ref

# The folder Ray unpacks a job's working_dir package into (ray._private.runtime_env.working_dir).
RAY_WORKING_DIR_FILES = "working_dir_files"


def uploaded_working_dir(cwd: str | Path | None = None) -> Path | None:
    """The uploaded working-dir copy ``cwd`` lies in (the package folder), or None."""
    parts = Path(cwd if cwd is not None else os.getcwd()).resolve().parts
    if RAY_WORKING_DIR_FILES not in parts[:-1]:
        return None
    i = parts.index(RAY_WORKING_DIR_FILES)
    return Path(*parts[: i + 2])


def _get(cfg: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        if cfg is None:
            return None
        cfg = getattr(cfg, name, None)
    return cfg


def check_uploaded_paths(
    cfg: Any, *, outputs: Iterable[str] = ("out",), folders: Iterable[str] = (), cwd: str | Path | None = None
) -> None:
    """Raise ConfigError for a relative path that cannot work in Ray's uploaded working dir.

    outputs: dotted names of the fields the job writes to: refused whenever relative.
    folders: dotted names of ``str`` model references (a ControlNet or model folder): refused
      when relative and local: a folder of the copy has no weights (they were not uploaded), and
      one missing from the copy was git-ignored. ``tiny`` and hub ids pass.
    Every ``Path`` field of ``cfg`` is an input unless it is in ``outputs``: refused when it is
    relative and missing from the copy (a tracked file such as a prompt YAML is uploaded and fine).
    """
    where = uploaded_working_dir(cwd)
    if where is None:
        return
    outputs = set(outputs)
    here = Path(cwd if cwd is not None else os.getcwd())
    for name in folders:
        value = _get(cfg, name)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        if (here / value).is_dir():
            # cluster/runtime_env.yaml keeps *.safetensors out of the upload: the folder is there, empty
            raise ConfigError(
                f"{name}={value} is a relative model folder, and this job runs in Ray's uploaded copy of "
                f"the working dir ({where}), which has no weights (*.safetensors are not uploaded); fix: "
                f"{name}=$PWD/{value} on the `ray job submit` command line"
            )
        if is_local_ref(value):
            raise ConfigError(
                f"{name}={value} is relative and not in Ray's uploaded copy of the working dir ({where}): "
                f"git-ignored files such as data/ and outputs/ are not uploaded; fix: {name}=$PWD/{value} "
                "on the `ray job submit` command line"
            )
    for name, path in path_fields(cfg):
        if path.is_absolute():
            continue
        if name in outputs:
            raise ConfigError(
                f"{name}={path} is relative, and this job runs in Ray's uploaded copy of the working dir "
                f"({where}), which Ray deletes after the job; fix: an absolute path on storage every node "
                f"sees, e.g. {name}=$PWD/{path} on the `ray job submit` command line"
            )
        if not (here / path).exists():
            raise ConfigError(
                f"{name}={path} is relative and not in Ray's uploaded copy of the working dir ({where}): "
                f"git-ignored files such as data/ and outputs/ are not uploaded; fix: {name}=$PWD/{path} "
                "on the `ray job submit` command line"
            )


__all__ = ["RAY_WORKING_DIR_FILES", "check_uploaded_paths", "uploaded_working_dir"]
