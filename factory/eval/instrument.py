"""Saving and loading the small offline instruments (depth judge, weather judge).

Why one place: both are a torch module plus the config it was built with, stored like the
judge segmenter as ``<path>.safetensors`` + ``<path>.json``; writes are atomic (a killed run
never leaves half a file that a later run would load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from factory.atomic import atomic_write_bytes, atomic_write_json


def instrument_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) of an instrument saved at ``path`` (with or without a suffix)."""
    path = Path(path)
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_instrument(
    path: str | Path, model: torch.nn.Module, config: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write the weights and a JSON sidecar (``config``: how to rebuild it; ``meta``: how it was trained)."""
    weights, sidecar = instrument_files(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights, save(state))
    atomic_write_json(sidecar, {"config": config, "meta": meta})
    return weights


def load_instrument(
    path: str | Path, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict, config, meta) of an instrument written by ``save_instrument``."""
    weights, sidecar = instrument_files(path)
    for p in (weights, sidecar):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: {what} file missing (fix: train one, e.g. python -m factory.eval.compare trains it)"
            )
    info = json.loads(sidecar.read_text())
    return load_file(str(weights)), dict(info["config"]), dict(info.get("meta") or {})


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The judges' learning-rate schedule: one cycle with a 10% warm-up of at least two steps.

    A fixed ``pct_start=0.1`` makes torch divide by zero for some short runs (10 steps: the
    warm-up phase would end where it starts), which tiny smoke-test budgets hit.
    """
    pct = 0.75 if steps < 4 else max(0.1, 2.0 / steps)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct)


def exists(path: str | Path) -> bool:
    """Whether both files of an instrument are there."""
    return all(p.is_file() for p in instrument_files(path))


def train_judge_cli(
    argv: list[str] | None, *, prog: str, description: str, judge_cls: Any, config_cls: Any
) -> int:
    """The train-and-save command every offline judge has: ``--out``, ``--threads`` and
    ``key=value`` overrides of its config; prints the saved path and the training meta."""
    import argparse

    from factory.config import load_config

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "overrides", nargs="*", help=f"{config_cls.__name__} key=value, e.g. steps=300 height=64 width=128"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    judge = judge_cls.train_procedural(load_config(config_cls, None, args.overrides))
    print(json.dumps({"out": str(judge.save(args.out)), **judge.meta}))
    return 0


__all__ = ["exists", "instrument_files", "load_instrument", "one_cycle", "save_instrument", "train_judge_cli"]
