"""Checkpoint loading for downstream training and evaluation: never unpickle arbitrary objects.

A ``.pth`` file is a pickle, and ``torch.load(..., weights_only=False)`` runs whatever code a
planted file asks for. Every downstream load goes through ``load_checkpoint`` instead: torch's
safe loader (``weights_only=True``, passed explicitly, so no environment variable turns it off)
with an explicit allow-list - exactly the non-tensor types mmengine pickles into its own
training checkpoints (``mmengine_checkpoint_globals``) - and a refusal that names the file.

Two kinds of caller, one loader:
- ``downstream.segformer.evaluate`` calls ``load_checkpoint`` itself;
- mmengine loads for us (``--resume``, ``load_from``, ``init_cfg=dict(type="Pretrained")`` of
  SegFormer and of the multi-task encoder) through its ``CheckpointLoader``;
  ``install_mmengine_loader`` makes ``load_checkpoint`` its loader for local files (importing
  ``downstream.segformer.register``, as every downstream config does, installs it).
"""

from __future__ import annotations

import builtins
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.data.sample import DataError


class CheckpointError(DataError):
    """A checkpoint file the safe loader refuses (its pickle needs a type outside the allow-list)."""


def mmengine_checkpoint_globals() -> list[Any]:
    """The non-tensor objects pickled in mmengine's own training checkpoints.

    torch >= 2.6 loads with ``weights_only=True``, which refuses them, so mmengine 0.10's
    resume fails (open-mmlab/mmengine#1655). Allow-listing exactly these - the message hub's
    HistoryBuffer and the numpy arrays, dtypes and scalars it holds - keeps the safe loader on,
    which ``weights_only=False`` would not.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    # numpy 2 stubs have no np.core (numpy < 2 has no np._core)
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # type: ignore[attr-defined]
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        multiarray._reconstruct,
        multiarray.scalar,
        builtins.getattr,  # how numpy pickles its dtype classes
        *dtypes,
    ]


def refused(path: str | Path, error: pickle.UnpicklingError) -> CheckpointError:
    """The error for a checkpoint the safe loader refused, naming the file and what it asked for.

    torch's own message advises retrying with ``weights_only=False``; that is exactly the code
    execution we refuse, so only the line naming the offending global is kept.
    """
    lines = [line.strip() for line in str(error).splitlines() if "global" in line.lower()]
    what = lines[0] if lines else str(error).strip().splitlines()[0]
    return CheckpointError(
        path,
        "refused to load this checkpoint: its pickle needs an object outside the allow-list of "
        f"tensors, plain containers and mmengine's training state ({what})",
        "load only checkpoints written by downstream training; for a checkpoint from elsewhere, "
        "re-save its state_dict (tensors only) with torch.save",
    )


def load_checkpoint(path: str | Path, allowed: Sequence[Any] | None = None, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with ``allowed`` allow-listed (default: mmengine's
    training state, ``mmengine_checkpoint_globals``).

    Raises ``CheckpointError`` naming the file when the pickle would need anything else (a
    planted ``__reduce__`` is refused before it runs), ``FileNotFoundError`` when it is missing.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    allow = mmengine_checkpoint_globals() if allowed is None else list(allowed)
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise refused(path, e) from None


def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader signature for local files (it logs the name after ``load_from_``)."""
    return load_checkpoint(filename, map_location=map_location)


def install_mmengine_loader() -> None:
    """Make mmengine read local checkpoint files with ``load_checkpoint`` (idempotent).

    mmengine's own local loader calls ``torch.load`` without ``weights_only``, so its safety
    rests on torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns off, and its
    refusal names no file. Registering for the empty prefix replaces exactly that loader; URLs
    and other schemes keep theirs.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_weights_only, force=True)


__all__ = [
    "CheckpointError",
    "install_mmengine_loader",
    "load_checkpoint",
    "load_from_local_weights_only",
    "mmengine_checkpoint_globals",
    "refused",
]
