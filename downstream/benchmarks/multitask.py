"""Multi-task benchmark (the paper's Table 3 in spirit): do LUMEN images carry the reference's
depth and 3D boxes well enough to train on?

The synthetic shards reuse each reference's disparity and gtBbox3d unchanged; if the generated
image kept the scene's geometry, a network trained on it learns depth and 3D boxes as from the
real image. Each training mix - real only, LUMEN only, real + LUMEN - trains the multi-task
network with several seeds on the same schedule and is evaluated on the real val images:
``mIoU`` (%), depth ``AbsRel`` and ``delta1`` (%), and the official Cityscapes 3D Detection Score
``mDS`` (%). The ground truth scored as its own prediction gives the evaluator's ceiling on that
set (below 100 at reduced resolution, see downstream.multitask.evaluate).

    python -m downstream.benchmarks.multitask --lumen outputs/generate/procedural/shards \
        --seeds 0 1 --out outputs/benchmarks/multitask
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from downstream.benchmarks.common import (
    error_bars,
    files_identity,
    finished_scores,
    format_cell,
    format_intervals,
    has_checkpoint,
    paired_intervals,
    recipe_digest,
    record_scores,
    run_dir,
    save_result,
    seeds_note,
    single_seed_note,
    summarise,
)
from factory.cli import run_cli
from factory.config import load_config, to_dict

COLUMNS = ("mIoU", "AbsRel", "delta1", "mDS")
MIXES = ("real", "LUMEN", "real + LUMEN")
LOWER_IS_BETTER = {"AbsRel"}


def row(metrics: dict[str, Any]) -> dict[str, float]:
    """The table's columns from an evaluation's metrics.json."""
    return {
        "mIoU": metrics["semantic"]["mIoU"],
        "AbsRel": metrics["depth"]["AbsRel"],
        "delta1": metrics["depth"]["delta1"],
        "mDS": metrics["det3d"].get("mDetection_Score", 0.0),
    }


def format_table(summary: dict[str, dict[str, dict[str, float]]], ceiling: float | None) -> str:
    width = max([len("Training data")] + [len(m) for m in summary]) + 2
    head = "Training data".ljust(width) + "".join(f"{c:>16}" for c in COLUMNS)
    lines = [head]
    for mix, cols in summary.items():
        cells = ""
        for c in COLUMNS:
            digits = 3 if c in LOWER_IS_BETTER else 1
            cells += format_cell(cols[c], digits, 16)
        lines.append(mix.ljust(width) + cells)
    lines += single_seed_note(summary)
    if ceiling is not None:
        lines.append(f"(mDS of the ground truth scored as its own prediction: {ceiling:.1f})")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, float]]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(11, 3))
    mixes = list(summary)
    for ax, c in zip(axes, COLUMNS):
        ax.bar(
            range(len(mixes)),
            [summary[m][c]["mean"] for m in mixes],
            yerr=error_bars([summary[m][c] for m in mixes]),
            capsize=3,
            color=[f"C{i}" for i in range(len(mixes))],
        )
        ax.set_xticks(range(len(mixes)), mixes, rotation=20, fontsize=8)
        ax.set_title(c + (" (lower is better)" if c in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(
        f"Multi-task network on the real val set, by training data ({seeds_note(summary)})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/downstream/multitask_procedural.yaml")
    p.add_argument(
        "--lumen", required=True, help="folder of LUMEN variant shards (the generation job's shards/)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ratio", type=float, default=0.5, help="share of synthetic draws in 'real + LUMEN'")
    p.add_argument("--mixes", nargs="+", default=list(MIXES), choices=MIXES, help="training mixes to run")
    p.add_argument(
        "overrides", nargs="*", help="config overrides for every run, e.g. iters=500 real.root=..."
    )
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/multitask"))
    # key=value overrides may follow --seeds/--mixes (whose nargs would otherwise swallow them)
    args = list(sys.argv[1:] if argv is None else argv)
    trailing = [x for x in args if "=" in x and not x.startswith("-")]
    a = p.parse_args([x for x in args if x not in trailing])
    a.overrides = [*a.overrides, *trailing]

    from downstream.multitask.data import list_refs
    from downstream.multitask.evaluate import gt_ceiling
    from downstream.multitask.train import MultitaskConfig, train

    synth = {"kind": "shards", "root": a.lumen}
    overrides = {
        "real": ["synth=null"],
        "LUMEN": [f"synth={json.dumps(synth)}", "real=null"],
        "real + LUMEN": [f"synth={json.dumps(synth)}", f"ratio={a.ratio}"],
    }
    mixes = {m: overrides[m] for m in MIXES if m in a.mixes}
    a.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {}
    cfg = None
    for mix, extra in mixes.items():
        for seed in a.seeds:
            wd = run_dir(a.out, mix, seed)
            cfg = load_config(MultitaskConfig, a.config, [*a.overrides, *extra, f"seed={seed}", f"out={wd}"])
            if cfg.val is None:
                p.error("the config needs a val source: the benchmark evaluates every run")
            shards = files_identity(sorted(Path(cfg.synth.root).rglob("*.tar"))) if cfg.synth else {}
            recipe = recipe_digest(a.config, run=to_dict(cfg), shards=shards)
            scores = finished_scores(wd, recipe)
            if scores is None:
                summary = train(cfg, resume=has_checkpoint(wd))
                scores = row(summary["eval"])
                record_scores(wd, recipe, scores)
            runs.setdefault(mix, []).append(scores)
    assert cfg is not None and cfg.val is not None
    refs = list_refs(cfg.val.kind, cfg.val.root, cfg.val.split)[: cfg.eval.limit]
    ceiling = gt_ceiling(refs, a.out / "gt_ceiling", tuple(cfg.box_classes), cfg.eval.min_iou)
    summary = summarise(runs, COLUMNS)
    intervals = paired_intervals(
        {m: [{c: r[c] for c in COLUMNS} for r in rs] for m, rs in runs.items()}, "real"
    )
    table = "\n".join(
        [
            format_table(summary, ceiling.get("mDetection_Score")),
            *format_intervals(intervals, COLUMNS, digits=3),
        ]
    )
    print(table)
    result = {
        "config": a.config,
        "overrides": a.overrides,
        "lumen": a.lumen,
        "ratio": a.ratio,
        "mixes": list(mixes),
        "seeds": a.seeds,
        "runs": runs,
        "summary": summary,
        "paired_difference_to_real": intervals,
        "gt_ceiling": ceiling,
        "table": table,
    }
    return save_result(a.out, "multitask", result, plot)


if __name__ == "__main__":
    sys.exit(
        run_cli(main, on_interrupt="rerun the same command: every run of the benchmark trains from scratch")
    )
