"""Ship a trained base model as a versioned checkpoint in the repository (``models/<name>``).

Why: the paper starts from a *pretrained* foundation model and trains only the ControlNet. The
offline world's stand-in for SD 1.5 is trained once by ``factory.train.base`` (``make
foundation``) and shipped like a checkpoint: a diffusers folder (safetensors only) that stock
``from_pretrained`` loads, plus what makes it reproducible and checkable:

- ``hashes.json``: the sha256 of every file (``verify`` checks them; a test does on every run);
- ``RECIPE.md``: the command and config, code commit, seed, steps, wall time, loss curve,
  the sample grid per caption and the per-weather brightness of the samples against real renders.

The comparison's offline judges (segmenter, depth and weather networks, ``make judges``) are
shipped the same way (``--judges``): they are a few seconds to a minute each to train, but the
demo's 15-minute budget is better spent on the ControlNets.

Usage::

    python -m factory.train.ship outputs/foundation/procedural-base-v1 models/procedural-base-v1 \\
        --command "make foundation" --commit <sha>
    python -m factory.train.ship --judges outputs/judges models/procedural-judges-v1 \\
        --command "make judges" --commit <sha>
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from factory.atomic import atomic_write_json, atomic_write_text, file_digest
from factory.cli import STARTS_OVER, run_cli

HASHES = "hashes.json"
RECIPE = "RECIPE.md"
# Only these are shipped: weights as safetensors, configs, the tokenizer, the preview and meta.
SHIPPED_SUFFIXES = (".safetensors", ".json", ".txt", ".png")


class ShipError(ValueError):
    """A shipped model's files do not match its recorded hashes (or are missing)."""


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 (full hex) of every shipped file, by path relative to ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in (HASHES, RECIPE):
            digest = file_digest(p, length=64)
            assert digest is not None
            out[rel] = digest
    return out


def verify(folder: str | Path) -> dict[str, str]:
    """Check every file of a shipped model against ``hashes.json``; returns the hashes."""
    folder = Path(folder)
    path = folder / HASHES
    if not path.is_file():
        raise ShipError(f"{path} is missing (fix: ship the model with `python -m factory.train.ship`)")
    recorded = json.loads(path.read_text())["files"]
    actual = file_hashes(folder)
    if recorded != actual:
        changed = sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
        raise ShipError(
            f"{folder}: files differ from {HASHES}: {', '.join(changed)} (fix: restore them from git, or "
            "retrain with `make foundation` and ship again)"
        )
    return actual


def loss_plot(curves: dict[str, list[float]], path: Path) -> Path:
    """The loss curves (means of 50-step windows) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2))
    for ax, (name, values) in zip(list(axes) if len(curves) > 1 else [axes], curves.items()):
        ax.plot([50 * (i + 1) for i in range(len(values))], values)
        ax.set_title(f"{name} loss (50-step means)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def recipe_text(name: str, meta: dict[str, Any], command: str, commit: str, size_mb: float) -> str:
    cfg = meta["config"]
    stats = meta.get("weather_stats") or {}
    rows = [
        f"| {w} | {s['generated']['brightness']:.2f} | {s['real']['brightness']:.2f} | "
        f"{s['generated']['contrast']:.2f} | {s['real']['contrast']:.2f} |"
        for w, s in stats.items()
    ]
    t = meta["timings"]
    return "\n".join(
        [
            f"# {name}: the offline world's pretrained foundation model",
            "",
            "A tiny Stable-Diffusion-style text-to-image model (VAE, U-Net, CLIP text encoder) trained",
            "by `factory.train.base` on unlabelled procedural street scenes of all weathers, each",
            "captioned with its weather. It stands in for SD 1.5: the demo, the tests that need a",
            "trained model and the docs start from it and train only the ControlNet.",
            "",
            "## Recipe",
            "",
            f"- command: `{command}`",
            f"- config: `configs/train/procedural_foundation.yaml` (below, as run), code commit `{commit}`",
            f"- seed {cfg['seed']}; {cfg['n_scenes']} scenes at {cfg['height']}x{cfg['width']}; VAE "
            f"{cfg['vae_steps']} steps; U-Net + text encoder {meta['unet_steps_done']} steps, batch "
            f"{cfg['batch_size']}, lr {cfg['lr']} ({cfg['lr_schedule']}); {cfg['prediction_type']}, "
            f"zero terminal SNR {cfg['zero_terminal_snr']}",
            f"- wall time: {t['train_total_s'] / 60:.1f} min of training ({t['vae_s'] / 60:.1f} VAE, "
            f"{t['unet_s'] / 60:.1f} U-Net) on {meta['torch_threads']} CPU thread(s), {meta['date']}"
            + (" (resumed after an interruption)" if meta.get("resumed") else ""),
            f"- size: {size_mb:.1f} MB (safetensors, float32)",
            f"- final losses (mean of the last 50 steps): VAE {meta['vae_loss']['last50']:.4f}, "
            f"U-Net {meta['unet_loss']['last50']:.4f}",
            "",
            "![loss](loss.png)",
            "",
            "## Samples per caption (left: real renders of that weather; right: the model, CFG "
            f"{cfg['preview_guidance']}, {cfg['preview_steps']} DDIM steps)",
            "",
            "![preview](preview.png)",
            "",
            "| caption | generated brightness | real | generated contrast | real |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "## Check",
            "",
            f"`{HASHES}` holds the sha256 of every file; `tests/models/test_shipped_model.py` checks them",
            "and loads the folder with stock diffusers `StableDiffusionPipeline.from_pretrained`.",
            "",
            "## Config as run",
            "",
            "```json",
            json.dumps(cfg, indent=1, default=str),
            "```",
            "",
        ]
    )


def ship(trained: str | Path, dest: str | Path, *, command: str, commit: str) -> Path:
    """Copy the shipped files of ``trained`` to ``dest`` and write its recipe and hashes."""
    trained, dest = Path(trained), Path(dest)
    meta = json.loads((trained / "lumen_base.json").read_text())
    if dest.exists():
        shutil.rmtree(dest)
    for p in sorted(trained.rglob("*")):
        if p.is_file() and p.suffix in SHIPPED_SUFFIXES:
            target = dest / p.relative_to(trained)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    loss_plot(meta["loss_curves"], dest / "loss.png")
    size_mb = sum(p.stat().st_size for p in dest.rglob("*.safetensors")) / 1e6
    atomic_write_text(dest / RECIPE, recipe_text(dest.name, meta, command, commit, size_mb))
    atomic_write_json(dest / HASHES, {"model": dest.name, "commit": commit, "files": file_hashes(dest)})
    return dest


# The judges a shipped judge folder holds: ``<name>.safetensors`` + ``<name>.json`` each, the
# names ``make judges`` writes under outputs/judges/.
JUDGES = {
    "segmenter": "alignment segmenter (factory.quality.segmenter): mIoU, FD and LPIPS features",
    "depth": "depth network (factory.eval.depth): SILog against the reference's geometry",
    "weather": "weather classifier (factory.eval.controllability): text controllability",
}


def judges_recipe_text(name: str, metas: dict[str, dict[str, Any]], command: str, commit: str) -> str:
    rows = []
    for judge, meta in metas.items():
        cfg, m = meta["config"], meta["meta"]
        rows.append(
            f"| {judge} | {JUDGES[judge]} | {cfg['height']}x{cfg['width']} | {cfg['steps']} | {cfg['seed']} | "
            f"{m['final_loss']:.4f} | {m['train_seconds']:.0f} s | {m['data']} |"
        )
    return "\n".join(
        [
            f"# {name}: the offline judges of the conditioning comparison",
            "",
            "Small networks trained on rendered (real) procedural scenes, never on generated images.",
            "They score the comparison (`factory.eval.compare`) where the paper uses real instruments",
            "(a Cityscapes segmenter, a depth network, FID's Inception, LPIPS' AlexNet, TIFA); give",
            "those by path on real data.",
            "",
            f"- command: `{command}` (each module's defaults), code commit `{commit}`",
            "- load: `Segmenter.load`, `DepthJudge.load`, `WeatherJudge.load` with the path without suffix",
            "",
            "| judge | what it measures | size | steps | seed | final loss | train time | data |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"`{HASHES}` holds the sha256 of every file; `tests/models/test_shipped_model.py` checks them.",
            "",
            "## Configs as run",
            "",
            "```json",
            json.dumps({k: v["config"] for k, v in metas.items()}, indent=1, default=str),
            "```",
            "",
        ]
    )


def ship_judges(trained: str | Path, dest: str | Path, *, command: str, commit: str) -> Path:
    """Copy the judges ``make judges`` wrote under ``trained`` to ``dest``, with recipe and hashes."""
    trained, dest = Path(trained), Path(dest)
    missing = [
        f"{trained / j}{s}"
        for j in JUDGES
        for s in (".safetensors", ".json")
        if not Path(f"{trained / j}{s}").is_file()
    ]
    if missing:
        raise ShipError(f"missing {', '.join(missing)} (fix: run `make judges` first)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    metas = {}
    for judge in JUDGES:
        for suffix in (".safetensors", ".json"):
            shutil.copy2(f"{trained / judge}{suffix}", dest / f"{judge}{suffix}")
        metas[judge] = json.loads((dest / f"{judge}.json").read_text())
    atomic_write_text(dest / RECIPE, judges_recipe_text(dest.name, metas, command, commit))
    atomic_write_json(dest / HASHES, {"model": dest.name, "commit": commit, "files": file_hashes(dest)})
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trained", type=Path, help="the folder factory.train.base (or make judges) wrote")
    ap.add_argument("dest", type=Path, help="models/<name>")
    ap.add_argument("--command", required=True, help="the command that trained it (recorded)")
    ap.add_argument("--commit", required=True, help="the code commit it was trained with (recorded)")
    ap.add_argument("--judges", action="store_true", help="ship the comparison's judges, not a base model")
    args = ap.parse_args(argv)
    out = (ship_judges if args.judges else ship)(
        args.trained, args.dest, command=args.command, commit=args.commit
    )
    print(json.dumps({"shipped": str(out), "files": len(verify(out))}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
