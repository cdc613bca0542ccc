"""Train the multi-task network (semantics + depth + 3D vehicle boxes) on real and/or synthetic data.

    python -m downstream.multitask.train --config configs/downstream/multitask_procedural.yaml \
        'synth={kind: shards, root: outputs/generate/procedural/shards}' out=outputs/multitask/real+lumen

The synthetic shards carry each reference's own disparity, camera and gtBbox3d bytes, so the
same losses train on them as on the real folders. With both ``real`` and ``synth`` given, draw
``t`` of the schedule is synthetic exactly when ``floor((t+1) r) > floor(t r)`` (the SegFormer
sampler's rule), so every batch holds the configured share ``r = ratio``. With probability
``flip`` a draw is mirrored left-right (image, labels and 3D-box targets together); the whole
schedule, mirroring included, is fixed by the seed before the first step.

A plain PyTorch loop (no mmengine runner: the model is ours, not an mmseg segmentor):
a checkpoint (model, optimiser, step, sampler state is implied by the step) every
``checkpoint_every`` steps and at the end; ``--resume`` continues from ``out/latest.pt`` and
reaches the same weights as an uninterrupted run. A sample that fails to load is written to
``out/bad_samples.jsonl`` and the batch goes on without it. At the end the model is evaluated on
``val`` (``out/eval/metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from downstream.checkpoints import load_checkpoint
from factory.atomic import atomic_torch_save
from factory.cli import config_help, run_cli
from factory.config import ConfigError, check, load_config, to_dict
from factory.data.sample import DataError
from factory.models import resolve_device

from .data import MultitaskDataset, TargetSpec, collate, list_refs
from .model import STRIDE, LossWeights, ModelConfig, MultiTaskNet, losses


@dataclass
class SourceConfig:
    """Where samples come from: official Cityscapes folders or a folder of our shards."""

    kind: Literal["cityscapes", "shards"]
    root: str
    split: str = "train"
    # shards generated with quality.segmenter: ignore the semantic pixels where the judge
    # disagreed with the reused label (<key>.agree.png; off by default, docs/shards.md)
    agreement_ignore: bool = False

    def __post_init__(self) -> None:
        check(
            not self.agreement_ignore or self.kind == "shards",
            "agreement_ignore",
            f"needs kind 'shards' (the agreement map is a shard member), got kind {self.kind!r}",
        )


@dataclass
class EvalConfig:
    max_depth: float = 80.0  # metres: depth metrics over pixels up to this depth
    min_iou: float = 0.7  # the 3D evaluator's 2D IoU to match (its default)
    min_score: float = 0.05  # heatmap peaks below this are not reported
    limit: int | None = None  # evaluate the first N val images only

    def __post_init__(self) -> None:
        check(self.max_depth > 0, "eval.max_depth", "must be positive")
        check(0.0 < self.min_iou <= 1.0, "eval.min_iou", f"must be in (0, 1], got {self.min_iou}")
        check(0.0 <= self.min_score < 1.0, "eval.min_score", f"must be in [0, 1), got {self.min_score}")


@dataclass
class MultitaskConfig:
    real: SourceConfig | None = None
    synth: SourceConfig | None = None
    ratio: float = 0.5  # share of synthetic draws when both sources are given
    val: SourceConfig | None = None
    size: list[int] = field(default_factory=lambda: [64, 128])  # network input (H, W)
    box_classes: list[str] = field(default_factory=lambda: ["car"])
    max_objects: int = 32
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    iters: int = 300
    batch_size: int = 4
    lr: float = 6e-4
    weight_decay: float = 0.01
    seed: int = 0
    num_workers: int = 0
    # where the network runs: "auto" = the first GPU when there is one, else the CPU
    device: str = "auto"
    # mixed precision: bf16 autocast (GPU: Ampere or newer; also runs on a CPU), fp16 autocast
    # with a gradient scaler (older GPUs), or none. Weights and optimiser state stay float32.
    amp: Literal["none", "bf16", "fp16"] = "none"
    cache: bool = False  # keep prepared samples in memory (small datasets; see MultitaskDataset)
    flip: float = 0.5  # probability of mirroring a training sample left-right (inputs and targets)
    checkpoint_every: int = 100
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "outputs/multitask"

    def __post_init__(self) -> None:
        check(
            self.real is not None or self.synth is not None,
            "real",
            "give real and/or synth (training data); both are null",
        )
        check(0.0 < self.ratio < 1.0, "ratio", f"must be in (0, 1) when mixing, got {self.ratio}")
        check(len(self.size) == 2, "size", f"needs [H, W], got {self.size}")
        h, w = self.size
        check(
            h % 32 == 0 and w % 32 == 0 and h > 0 and w > 0,
            "size",
            f"{self.size}: H and W must be positive multiples of 32 (the MiT encoder's stride)",
        )
        check(len(self.box_classes) > 0, "box_classes", "needs at least one class (e.g. [car])")
        check(self.max_objects > 0, "max_objects", "must be positive")
        check(self.iters > 0, "iters", f"must be positive, got {self.iters}")
        check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(0.0 <= self.flip <= 1.0, "flip", f"is a probability in [0, 1], got {self.flip}")
        check(self.checkpoint_every > 0, "checkpoint_every", "must be positive")

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec(tuple(self.size), STRIDE, tuple(self.box_classes), self.max_objects)  # type: ignore[arg-type]


def draw_schedule(
    n_real: int, n_synth: int, ratio: float, total: int, seed: int, flip: float = 0.0
) -> list[int]:
    """The first ``total`` dataset indices (real first, then synthetic) of a seeded schedule.

    Each source is walked through its own reshuffled permutation (every sample once per pass);
    with both sources, draw t is synthetic iff floor((t+1) r) > floor(t r). With probability
    ``flip`` a draw takes the mirrored copy (index + n_real + n_synth, see MultitaskDataset).
    """
    from downstream.segformer.sampler import is_synth_draw

    rng = np.random.default_rng(seed)
    pools = {"real": (0, n_real), "synth": (n_real, n_synth)}
    queues: dict[str, list[int]] = {"real": [], "synth": []}
    out = []
    for t in range(total):
        if n_real and n_synth:
            src = "synth" if is_synth_draw(t, ratio) else "real"
        else:
            src = "real" if n_real else "synth"
        if not queues[src]:
            start, n = pools[src]
            queues[src] = list(start + rng.permutation(n))
        out.append(int(queues[src].pop(0)))
    mirror = np.random.default_rng([seed, 1]).random(total) < flip
    return [i + (n_real + n_synth) * int(m) for i, m in zip(out, mirror)]


def _lr_at(cfg: MultitaskConfig, step: int) -> float:
    """Poly decay (power 1) after a short warm-up, SegFormer's schedule."""
    warm = max(1, min(50, cfg.iters // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * (1.0 - (step - warm) / max(1, cfg.iters - warm))


def train(cfg: MultitaskConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train, checkpoint, evaluate. Returns a summary (also ``out/summary.json``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    refs_real = (
        list_refs(cfg.real.kind, cfg.real.root, cfg.real.split, cfg.real.agreement_ignore) if cfg.real else []
    )
    refs_synth = (
        list_refs(cfg.synth.kind, cfg.synth.root, cfg.synth.split, cfg.synth.agreement_ignore)
        if cfg.synth
        else []
    )
    if cfg.real and cfg.synth:
        _check_disjoint(refs_real, refs_synth)
    dataset = MultitaskDataset(refs_real + refs_synth, cfg.spec, cache=cfg.cache)
    schedule = draw_schedule(
        len(refs_real), len(refs_synth), cfg.ratio, cfg.iters * cfg.batch_size, cfg.seed, cfg.flip
    )

    device = resolve_device(cfg.device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs a CUDA device (its gradient scaler); use bf16 or none on a CPU")
    model = MultiTaskNet(cfg.model, len(cfg.box_classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    start = 0
    latest = out / "latest.pt"
    if resume and latest.is_file():
        state = load_checkpoint(latest, allowed=())  # tensors and plain containers only
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        print(f"resumed from {latest} at step {start}")
    # The draw schedule is fixed up front: a resumed run draws exactly what the uninterrupted one did.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, schedule[start * cfg.batch_size :]),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    bad_log, loss_log = out / "bad_samples.jsonl", out / "losses.jsonl"
    for log in (bad_log, loss_log):  # drop lines of steps a resumed run redoes: nothing twice
        _keep_steps_before(log, start)
    n_bad = 0
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(loader, total=cfg.iters - start, initial=0, desc="multitask", unit="step")
    step = start
    for batch in bar:
        for key, reason in batch["bad"]:
            n_bad += 1
            with bad_log.open("a") as f:
                f.write(json.dumps({"step": step, "key": key, "reason": reason}) + "\n")
        if "image" in batch:
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step)
            batch = to_device(batch, device)
            with autocast(device, cfg.amp):
                out_ = model(batch["image"])
            # losses in float32 whatever the forward ran in (heatmap focal loss, log depth)
            ls = losses({k: v.float() for k, v in out_.items()}, batch, cfg.loss)
            if not torch.isfinite(ls["total"]):
                raise FloatingPointError(
                    f"step {step}: loss is {ls['total'].item()} ({ {k: float(v) for k, v in ls.items()} }); "
                    f"lower lr, or check this step's samples; {latest} holds the last checkpoint"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(ls["total"]).backward()
            scaler.step(opt)
            scaler.update()
            logged = {"step": step, **{k: float(v.detach()) for k, v in ls.items()}}
            with loss_log.open("a") as f:
                f.write(json.dumps(logged) + "\n")
            bar.set_postfix(loss=f"{logged['total']:.3f}", bad=n_bad)
        step += 1
        if step % cfg.checkpoint_every == 0 or step == cfg.iters:
            _save(latest, model, opt, step, scaler)
    train_seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "steps": cfg.iters,
        "resumed_at": start,
        "train_seconds": train_seconds,
        "real": len(refs_real),
        "synth": len(refs_synth),
        "bad_samples": n_bad,
        "device": str(device),
        "amp": cfg.amp,
    }
    if cfg.val is not None:
        from .evaluate import evaluate

        refs_val = list_refs(cfg.val.kind, cfg.val.root, cfg.val.split)
        if cfg.eval.limit is not None:
            refs_val = refs_val[: cfg.eval.limit]
        summary["eval"] = evaluate(
            model,
            refs_val,
            cfg.spec,
            out / "eval",
            max_depth=cfg.eval.max_depth,
            min_iou=cfg.eval.min_iou,
            min_score=cfg.eval.min_score,
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check_disjoint(real: list, synth: list) -> None:
    """A synthetic key must not also be a real key (two copies of one sample in the mix)."""
    both = sorted({r.key for r in real} & {s.key for s in synth})
    if both:
        raise DataError(
            synth[0].meta.get("shard", "synth"),
            f"{len(both)} synthetic sample keys are also real keys (e.g. {both[:3]})",
            "point synth.root at generated variant shards, not at shards of the real references",
        )


def _keep_steps_before(log: Path, step: int) -> None:
    """Rewrite a per-step JSON-lines log without the lines of steps >= ``step``."""
    if not log.is_file():
        return
    lines = [x for x in log.read_text().splitlines() if x.strip() and json.loads(x)["step"] < step]
    log.write_text("".join(x + "\n" for x in lines))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (non-blocking from pinned memory); lists stay as they are."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def autocast(device: torch.device, amp: str) -> Any:
    """The forward pass's autocast context for ``amp`` (a no-op context for "none")."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _save(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, scaler: torch.amp.GradScaler
) -> None:
    # a kill mid-save leaves the previous checkpoint intact
    atomic_torch_save(
        path,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "scaler": scaler.state_dict(),
        },
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m downstream.multitask.train",
        description=__doc__,
        epilog=config_help(MultitaskConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, required=True, help="YAML with MultitaskConfig fields")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. iters=100 synth=null")
    p.add_argument("--resume", action="store_true", help="continue from out/latest.pt")
    a = p.parse_args(argv)
    cfg = load_config(MultitaskConfig, a.config, a.overrides, config_dir="configs/downstream")
    summary = train(cfg, resume=a.resume)
    if "eval" in summary:
        e = summary["eval"]
        print(
            f"mIoU {e['semantic']['mIoU']:.1f} | depth AbsRel {e['depth']['AbsRel']:.3f} "
            f"delta1 {e['depth']['delta1']:.1f} | 3D mDS {e['det3d'].get('mDetection_Score', math.nan):.1f}"
        )
    return summary


if __name__ == "__main__":
    sys.exit(
        run_cli(main, on_interrupt="rerun the same command with --resume to continue from <out>/latest.pt")
    )
