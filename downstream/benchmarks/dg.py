"""Domain-generalisation benchmark (the paper's Table 4): train on Cityscapes (+ shards), test on ACDC.

Each training *mix* - real only; real + LUMEN variant shards; real + classical weather
augmentation (``--classical``: albumentations, downstream.segformer.classical); real + other
shards (``--other NAME=GLOB``, e.g. the oracle twins that ``synthesizer=factory.synth.oracle:build``
writes: the procedural renderer's own weather on the same train scenes, the ceiling of perfect
synthesis) - is trained with the same seeds on the same schedule, then evaluated on Cityscapes
val and on ACDC val per weather. Printed as ``CS Rain Fog Snow Night Avg`` (mean +- sample
standard deviation over seeds; Avg = mean of the four ACDC weathers) and, per mix, the paired
difference to real-only with its 95% interval (Student's t over the per-seed differences,
``common.paired_intervals``); written as JSON and as a bar plot.

Guard: ACDC is the test domain. No ACDC image may reach training (checked by sample key and
source key of every training sample) or the PCA fit of the layouts (``--pca-meta``, checked by
the keys its sidecar lists). The one knob a mix has, its ratio of synthetic (or augmented)
draws, is fixed (``--ratio``) or chosen per mix among ``--select-ratios`` on the ACDC *train*
split (``--select-seeds``; adverse-weather average), never on the val split the table reports;
the chosen ratio's selection runs are reused as its runs of those seeds.

    python -m downstream.benchmarks.dg --lumen 'outputs/generate/procedural/shards/*.tar' --seeds 0 1 2 --out outputs/benchmarks/dg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
from downstream.segformer.shards import expand_shards
from factory.cli import run_cli
from factory.data.sample import DataError

COLUMNS = ("CS", "Rain", "Fog", "Snow", "Night", "Avg")
ACDC_COLUMNS = {"rain": "Rain", "fog": "Fog", "snow": "Snow", "night": "Night"}
PCA_KEY_FIELDS = ("fit_keys", "keys", "sample_keys", "train_keys")


def acdc_keys(acdc_root: str | Path) -> set[str]:
    """Every ACDC image key under ``acdc_root`` (all weathers, splits, and ``_ref`` images)."""
    root = Path(acdc_root) / "rgb_anon"
    keys = {p.name[: -len("_rgb_anon.png")] for p in root.glob("*/*/*/*_rgb_anon.png")}
    keys |= {p.name[: -len("_rgb_ref_anon.png")] for p in root.glob("*/*/*/*_rgb_ref_anon.png")}
    return keys


def _infos(dataset: Any) -> list[dict]:
    parts = getattr(dataset, "datasets", None) or [dataset]
    return [p.get_data_info(i) for p in parts for i in range(len(p))]


def check_no_acdc_in_training(train_dataset: Any, forbidden: set[str]) -> int:
    """Raise if any training sample is an ACDC image (by dataset, key or source key)."""
    n = 0
    for info in _infos(train_dataset):
        n += 1
        key = str(info.get("key", ""))
        src = str(info.get("source_key", key.split("__")[0]))
        if info.get("dataset") == "acdc" or key in forbidden or src in forbidden:
            raise DataError(
                info.get("img_path", key),
                f"training sample {key!r} (source {src!r}) is an ACDC image",
                "ACDC is the test domain: train only on Cityscapes and on shards generated from Cityscapes references",
            )
    return n


def check_pca_meta(path: str | Path, forbidden: set[str]) -> int:
    """Raise if the PCA sidecar lists an ACDC key among its fitted samples (or lists none)."""
    meta = json.loads(Path(path).read_text())
    for field in PCA_KEY_FIELDS:
        if isinstance(meta.get(field), list):
            bad = sorted(set(map(str, meta[field])) & forbidden)
            if bad:
                raise DataError(
                    path,
                    f"the layout PCA was fitted on ACDC images {bad[:5]}",
                    "re-fit the PCA on Cityscapes train images only",
                )
            return len(meta[field])
    raise DataError(
        path,
        f"PCA sidecar lists no fitted sample keys (looked for {list(PCA_KEY_FIELDS)})",
        "re-fit the PCA with a version that records its sample keys, so the ACDC guard can check them",
    )


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    width = max([len("Training data")] + [len(m) for m in summary]) + 2
    lines = ["Training data".ljust(width) + "".join(f"{c:>14}" for c in COLUMNS)]
    for mix, cols in summary.items():
        cells = "".join(format_cell(cols[c], 1, 14) for c in COLUMNS)
        lines.append(mix.ljust(width) + cells)
    return "\n".join(lines + single_seed_note(summary))


def plot(summary: dict[str, dict[str, dict[str, float]]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(summary)
    x = np.arange(len(COLUMNS))
    w = 0.8 / max(1, len(mixes))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, m in enumerate(mixes):
        ax.bar(
            x + i * w - 0.4 + w / 2,
            [summary[m][c]["mean"] for c in COLUMNS],
            w,
            yerr=error_bars([summary[m][c] for c in COLUMNS]),
            capsize=2,
            label=m,
        )
    ax.set_xticks(x, COLUMNS)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"Cityscapes -> ACDC domain generalisation ({seeds_note(summary)})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_one(
    config: str,
    synth: str | None,
    augment: str | None,
    ratio: float,
    seed: int,
    max_iters: int | None,
    work_dir: Path,
    forbidden: set[str],
    select_split: str | None = None,
) -> dict[str, float]:
    """Train one (mix, seed) and evaluate it on CS val and each ACDC weather (and, with
    ``select_split``, on that ACDC split too: keys ``"<split> Rain"``... ``"<split> Avg"``); a run
    that finished earlier with the same recipe is not trained again, one killed mid-way resumes."""
    from mmseg.registry import DATASETS

    from downstream.segformer.evaluate import predict_and_score
    from downstream.segformer.train import build_config, train

    shards = files_identity(expand_shards(synth)) if synth else {}
    settings: dict[str, Any] = {"shards": shards, "ratio": ratio, "seed": seed, "max_iters": max_iters}
    if augment:
        settings["augment"] = augment  # (absent otherwise: earlier runs' recipes stay valid)
    recipe = recipe_digest(config, **settings)
    done = finished_scores(work_dir, recipe)
    if done is not None and (select_split is None or f"{select_split} Avg" in done):
        return done
    cfg = build_config(
        config,
        synth=synth,
        augment=augment,
        ratio=ratio,
        work_dir=work_dir,
        max_iters=max_iters,
        seed=seed,
        validate=False,
    )
    cfg.resume = has_checkpoint(work_dir)
    # 1. guard: build the training set's index (no images decoded) and check every key
    train_set = DATASETS.build(cfg.train_dataloader.dataset)
    check_no_acdc_in_training(train_set, forbidden)
    # 2. train
    runner = train(cfg)
    # 3. evaluate
    from downstream.segformer.evaluate import eval_dataset_cfgs

    row: dict[str, float] = {}
    for name, ds_cfg in eval_dataset_cfgs(cfg).items():
        column = ACDC_COLUMNS.get(name, name)
        row[column] = predict_and_score(runner.model, DATASETS.build(ds_cfg), desc=column).miou()
    row["Avg"] = float(np.mean([row[c] for c in ACDC_COLUMNS.values()]))
    if select_split:
        for name, ds_cfg in eval_dataset_cfgs(cfg, acdc_split=select_split).items():
            column = f"{select_split} {ACDC_COLUMNS[name]}"
            row[column] = predict_and_score(runner.model, DATASETS.build(ds_cfg), desc=column).miou()
        row[f"{select_split} Avg"] = float(
            np.mean([row[f"{select_split} {c}"] for c in ACDC_COLUMNS.values()])
        )
    record_scores(work_dir, recipe, row)
    return row


SELECT_SPLIT = "train"


def ratio_dir(out: Path, ratio: float) -> Path:
    """Where the runs of one candidate ratio live when ratios are selected: ``out/ratio-<r>``."""
    return out / f"ratio-{ratio:g}"


def selection_lines(selection: dict[str, Any]) -> list[str]:
    if not selection:
        return []
    first = next(iter(selection.values()))
    lines = [
        f"Mix ratio chosen per mix on ACDC {first['split']} (seeds {first['seeds']}; adverse-weather "
        "average mIoU per candidate), never on the val split above:"
    ]
    for mix, sel in selection.items():
        cands = ", ".join(
            f"{r} -> {v:.1f}" + (" (chosen)" if float(r) == sel["chosen"] else "")
            for r, v in sel["scores"].items()
        )
        lines.append(f"  {mix}: {cands}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from downstream.segformer.train import DEFAULT_CONFIG

    p = argparse.ArgumentParser(
        prog="python -m downstream.benchmarks.dg",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="mmseg config (train/val data, schedule, ACDC sets)"
    )
    p.add_argument("--lumen", default=None, help="glob of LUMEN variant shards -> mix 'real + LUMEN'")
    p.add_argument(
        "--other",
        action="append",
        default=[],
        metavar="NAME=GLOB",
        help="more shard mixes, e.g. 'canny=out/canny/*.tar' -> mix 'real + canny' (repeatable)",
    )
    p.add_argument(
        "--classical",
        action="store_true",
        help="add the mix 'real + classical aug': the same ratio of draws are real images through "
        "albumentations' fog / rain / snow / darkening (the baseline a practitioner tries first)",
    )
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of training samples from the shards")
    p.add_argument(
        "--select-ratios",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="choose each mix's ratio among these on the ACDC train split (replaces --ratio)",
    )
    p.add_argument(
        "--select-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds of the selection runs (default: the first of --seeds)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--max-iters", type=int, default=None, help="schedule length for every run (default: config's)"
    )
    p.add_argument(
        "--pca-meta", default=None, help="JSON sidecar of the layout PCA; its fitted keys are checked"
    )
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/dg"))
    a = p.parse_args(argv)
    if a.select_ratios is not None and not all(0.0 < r < 1.0 for r in a.select_ratios):
        p.error(f"--select-ratios {a.select_ratios}: each must be in (0, 1)")

    from mmengine.config import Config

    mixes: dict[str, dict[str, str | None]] = {"real": {"synth": None, "augment": None}}
    if a.lumen:
        mixes["real + LUMEN"] = {"synth": a.lumen, "augment": None}
    if a.classical:
        mixes["real + classical aug"] = {"synth": None, "augment": "classical"}
    for item in a.other:
        if "=" not in item:
            p.error(f"--other {item!r}: expected NAME=GLOB")
        name, glob_ = item.split("=", 1)
        mixes[f"real + {name}"] = {"synth": glob_, "augment": None}
    acdc_root = Config.fromfile(a.config).acdc_val["data_root"]
    forbidden = acdc_keys(acdc_root)
    if not forbidden:
        raise DataError(
            acdc_root,
            "no ACDC images found",
            "point the config's acdc_root at ACDC (make city writes data/procedural/acdc)",
        )
    if a.pca_meta:
        check_pca_meta(a.pca_meta, forbidden)
    a.out.mkdir(parents=True, exist_ok=True)
    # 1. each synthetic mix's ratio: fixed, or chosen on the ACDC train split
    ratios = {mix: a.ratio for mix in mixes if mix != "real"}
    selection: dict[str, Any] = {}
    if a.select_ratios:
        select_seeds = a.select_seeds or a.seeds[:1]
        for mix in ratios:
            source = mixes[mix]
            scores = {}
            for r in a.select_ratios:
                rows = [
                    run_one(a.config, source["synth"], source["augment"], r, seed, a.max_iters,
                            run_dir(ratio_dir(a.out, r), mix, seed), forbidden, select_split=SELECT_SPLIT)
                    for seed in select_seeds
                ]  # fmt: skip
                scores[f"{r:g}"] = float(np.mean([row[f"{SELECT_SPLIT} Avg"] for row in rows]))
            ratios[mix] = float(max(scores, key=lambda k: scores[k]))  # ties: the first listed
            selection[mix] = {
                "split": SELECT_SPLIT,
                "seeds": select_seeds,
                "scores": scores,
                "chosen": ratios[mix],
            }
    # 2. every mix with every seed (the chosen ratio's selection runs are reused, not retrained)
    runs: dict[str, list[dict[str, float]]] = {}
    for mix, source in mixes.items():
        ratio = ratios.get(mix, a.ratio)
        base = ratio_dir(a.out, ratio) if a.select_ratios and mix != "real" else a.out
        for seed in a.seeds:
            wd = run_dir(base, mix, seed)
            runs.setdefault(mix, []).append(
                run_one(a.config, source["synth"], source["augment"], ratio, seed, a.max_iters, wd, forbidden)
            )
    summary = summarise(runs, COLUMNS)
    intervals = paired_intervals(runs, "real")
    table = "\n".join(
        [format_table(summary), *format_intervals(intervals, COLUMNS), *selection_lines(selection)]
    )
    print(table)
    result = {
        "config": a.config,
        "mixes": {m: s for m, s in mixes.items()},
        "ratio": ratios,
        "selection": selection,
        "seeds": a.seeds,
        "max_iters": a.max_iters,
        "runs": runs,
        "summary": summary,
        "paired_difference_to_real": intervals,
        "table": table,
    }
    return save_result(a.out, "dg", result, plot)


if __name__ == "__main__":
    sys.exit(
        run_cli(main, on_interrupt="rerun the same command: every run of the benchmark trains from scratch")
    )
