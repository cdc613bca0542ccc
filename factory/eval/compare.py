"""The conditioning comparison of the LUMEN paper's Table 2, for trained ControlNet folders.

Why: which conditioning makes the best synthetic data is a question of five numbers, not of
pictures - alignment with the reused labels, geometry, realism, diversity per layout and how
much the prompt still steers the weather. This samples every ControlNet through the factory's
own ``Synthesizer`` (the code that makes the shipped data, with its recorded recipe) on the same
references and seeds, and scores the images with ``factory.eval``:

1. load N references of the evaluation split with their labels (semantics, disparity, camera)
   and the real images the realism column compares against;
2. load the instruments: the real models given by path, else the offline judges (trained on
   rendered procedural scenes and saved when their files are missing);
3. per ControlNet: synthesise each reference with the clear prompt for ``seeds`` seeds and, for
   the first ``weather_refs`` references, once per weather prompt;
4. score: mIoU (segmenter vs the reference's trainIds), SILog (depth vs the reference's depth),
   FD (clear samples vs the real set), LPIPS (mean pairwise within a reference's seeds),
   text controllability (weather accuracy, or CLIP score, on the weather samples and the first
   clear sample of those references);
5. print the table and write ``compare.json``, ``compare.png`` (one panel per column) and a
   picture grid per ControlNet.

Two reference rows frame the numbers: ``real reference`` scores the real images themselves (the
ceiling of mIoU and SILog, and the FD of real images at the same count - small sample counts
bias FD upwards) and ``no condition`` runs the base model with the ControlNet switched off.
Column names say which instrument made them: FD(judge) and LPIPS(judge) are not FID and LPIPS.

Usage::

    python -m factory.eval.compare --controlnet layout=outputs/controlnet/procedural_layout \\
        --controlnet canny=outputs/controlnet/procedural_canny --data outputs/city/cityscapes \\
        --out outputs/compare [--n 8 --seeds 2 --weather-refs 4] [--fid-inception pt_inception.pth] ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from factory.atomic import atomic_write_text
from factory.cli import STARTS_OVER, run_cli
from factory.config import check

# column key -> (offline label, label with the real instrument, higher is better)
COLUMNS: dict[str, tuple[str, str, bool]] = {
    "miou": ("mIoU", "mIoU", True),
    "si_log": ("SILog", "SILog", False),
    "fd": ("FD(judge)", "FID", False),
    "lpips": ("LPIPS(judge)", "LPIPS", True),
    "text": ("weather acc", "CLIP score", True),
}
REAL_ROW, NONE_ROW = "real reference", "no condition"


@dataclass
class CompareConfig:
    """What to compare and how; validated on construction (errors name the field).

    controlnets: name -> trained ControlNet folder (its recipe gives base model and condition).
    data / split: the Cityscapes-layout root and the split whose first ``n`` references are used;
      ``real_split``: the real images the FD column compares against (at most ``fd_real``).
    seeds: clear samples per reference (>= 2: diversity is measured between them).
    weather_refs: references also generated once per ``weathers`` prompt (text controllability).
    prompts: the prompt file; it must define ``clear`` and every weather.
    segmenter / depth_judge / weather_judge: the offline judges' paths (trained when missing).
    seg_model, depth_model, fid_inception, lpips_backbone (+ lpips_linear), clip: real
      instruments; each one given replaces the offline judge of its column.
    """

    controlnets: dict[str, Path]
    data: Path
    out: Path
    split: str = "val"
    real_split: str = "train"
    fd_real: int = 500
    n: int = 8
    seeds: int = 2
    weather_refs: int = 4
    weathers: list[str] = field(default_factory=lambda: ["fog", "night", "rain", "snow"])
    prompts: Path = Path("configs/prompts/procedural.yaml")
    steps: int = 20
    guidance: float = 3.0
    scheduler: Literal["ddim", "unipc", "euler"] = "ddim"
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0
    unconditioned: bool = True
    grid_refs: int = 4
    segmenter: Path = Path("outputs/judges/segmenter")
    depth_judge: Path = Path("outputs/judges/depth")
    weather_judge: Path = Path("outputs/judges/weather")
    seg_model: Path | None = None
    depth_model: Path | None = None
    depth_output: Literal["auto", "metric", "relative"] = "auto"
    fid_inception: Path | None = None
    lpips_backbone: Path | None = None
    lpips_linear: Path | None = None
    clip: Path | None = None

    def __post_init__(self) -> None:
        check(len(self.controlnets) >= 1, "controlnets", "give at least one NAME=FOLDER")
        for name in self.controlnets:
            check(name not in (REAL_ROW, NONE_ROW), "controlnets", f"{name!r} is a reserved row name")
        check(self.n >= 2, "n", f"must be >= 2 (FD needs two samples), got {self.n}")
        check(self.seeds >= 2, "seeds", f"must be >= 2 (diversity compares seeds), got {self.seeds}")
        check(
            0 <= self.weather_refs <= self.n,
            "weather_refs",
            f"must be in [0, n={self.n}], got {self.weather_refs}",
        )
        check(self.fd_real >= 2, "fd_real", f"must be >= 2, got {self.fd_real}")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.depth_output in ("auto", "metric", "relative"), "depth_output", "auto, metric or relative")
        check(
            self.scheduler in ("ddim", "unipc", "euler"),
            "scheduler",
            f"{self.scheduler!r}: ddim, unipc or euler",
        )
        if self.clip is None:  # the offline weather judge knows the procedural weathers only
            from factory.eval.controllability import WEATHERS

            unknown = sorted(set(self.weathers) - set(WEATHERS))
            check(
                not unknown, "weathers", f"{unknown}: the weather judge knows {list(WEATHERS)} (or give clip)"
            )
        check(self.lpips_linear is None or self.lpips_backbone is not None, "lpips_linear",
              "needs lpips_backbone (the AlexNet weights)")  # fmt: skip


# ------------------------------------------------------------------------------ instruments


@dataclass
class Instruments:
    """What scores each column, and the words that say so in the outputs."""

    segmenter: Any  # .predict(images) -> trainIds
    depth: Any  # .predict(images) -> depth, .relative
    features: Callable[[np.ndarray], np.ndarray]  # images -> (N, D) realism features
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray]  # image pairs -> (P,) diversity
    text: Callable[[np.ndarray, list[str], list[str]], float]  # images, prompts, weathers -> score
    real: dict[str, bool]  # column -> measured with the real instrument
    described: dict[str, str]  # column -> instrument, in words


def _ensure(path: Path, load: Callable[[Path], Any], train: Callable[[], Any], what: str) -> Any:
    from factory.eval.instrument import exists

    if exists(path):
        return load(path)
    print(f"  training the {what} (no {path}.safetensors yet)", flush=True)
    judge = train()
    judge.save(path)
    return judge


def load_instruments(cfg: CompareConfig, size: tuple[int, int]) -> Instruments:
    """Real instruments where a path is given, offline judges otherwise (trained at ``size``
    when their files are missing)."""
    from factory.eval import controllability, depth, diversity, fid
    from factory.quality.segmenter import Segmenter, SegmenterConfig

    h, w = size
    judge = _ensure(cfg.segmenter, Segmenter.load,
                    lambda: Segmenter.train_procedural(SegmenterConfig(height=h, width=w)), "judge segmenter")  # fmt: skip
    described: dict[str, str] = {}
    real: dict[str, bool] = {}

    seg: Any = judge
    described["miou"] = f"judge segmenter {cfg.segmenter}"
    if cfg.seg_model is not None:
        from factory.eval.alignment import TransformersSegmenter

        seg = TransformersSegmenter(cfg.seg_model, device=cfg.device)
        described["miou"] = f"transformers segmenter {cfg.seg_model}"
    real["miou"] = cfg.seg_model is not None

    est: Any
    if cfg.depth_model is not None:
        est = depth.TransformersDepth(cfg.depth_model, output=cfg.depth_output, device=cfg.device)
        described["si_log"] = (
            f"transformers depth {cfg.depth_model} ({'relative' if est.relative else 'metric'})"
        )
    else:
        est = _ensure(cfg.depth_judge, depth.DepthJudge.load,
                      lambda: depth.DepthJudge.train_procedural(depth.DepthJudgeConfig(height=h, width=w)),
                      "depth judge")  # fmt: skip
        described["si_log"] = f"depth judge {cfg.depth_judge}"
    real["si_log"] = cfg.depth_model is not None

    if cfg.fid_inception is not None:
        net = fid.load_fid_inception(cfg.fid_inception)

        def features(images: np.ndarray) -> np.ndarray:
            return fid.inception_features(net, images)

        described["fd"] = f"FID Inception-V3 {cfg.fid_inception}"
    else:

        def features(images: np.ndarray) -> np.ndarray:
            return fid.judge_features(judge, images)

        described["fd"] = "judge segmenter's deepest encoder stage, spatial mean"
    real["fd"] = cfg.fid_inception is not None

    if cfg.lpips_backbone is not None:
        distance = diversity.lpips_distance(diversity.load_lpips_alex(cfg.lpips_backbone, cfg.lpips_linear))
        described["lpips"] = f"LPIPS AlexNet {cfg.lpips_backbone}" + (
            f" + {cfg.lpips_linear}" if cfg.lpips_linear else " (unweighted baseline)"
        )
    else:
        distance = diversity.judge_distance(judge)
        described["lpips"] = "judge segmenter's encoder stages, unweighted, layers averaged"
    real["lpips"] = cfg.lpips_backbone is not None

    if cfg.clip is not None:
        scorer = controllability.ClipScorer(cfg.clip, device=cfg.device)

        def text(images: np.ndarray, prompts: list[str], weathers: list[str]) -> float:
            return float(np.mean(scorer.score(images, prompts)))

        described["text"] = f"CLIP score {cfg.clip}"
    else:
        wj = _ensure(cfg.weather_judge, controllability.WeatherJudge.load,
                     lambda: controllability.WeatherJudge.train_procedural(
                         controllability.WeatherJudgeConfig(height=h, width=w)),
                     "weather judge")  # fmt: skip

        def text(images: np.ndarray, prompts: list[str], weathers: list[str]) -> float:
            return controllability.weather_accuracy(wj.predict(images), weathers)

        described["text"] = f"weather judge {cfg.weather_judge} (chance 0.2)"
    real["text"] = cfg.clip is not None
    return Instruments(seg, est, features, distance, text, real, described)


def column_labels(real: dict[str, bool]) -> dict[str, str]:
    """Each column's printed name, which says whether its instrument was the real one."""
    return {k: (COLUMNS[k][1] if real[k] else COLUMNS[k][0]) for k in COLUMNS}


def column_report(inst: Instruments) -> list[dict[str, Any]]:
    """Each column as the JSON reports record it: key, printed label, direction, instrument."""
    labels = column_labels(inst.real)
    return [
        {
            "key": k,
            "label": labels[k],
            "higher_is_better": COLUMNS[k][2],
            "instrument": inst.described[k],
            "real_instrument": inst.real[k],
        }
        for k in COLUMNS
    ]


# ------------------------------------------------------------------------------ references


def reference_size(cfg: CompareConfig) -> tuple[int, int]:
    """(H, W) of the first evaluated reference: the size offline judges are trained at."""
    from PIL import Image

    from factory.data.cityscapes import list_cityscapes

    first = list_cityscapes(cfg.data, cfg.split).refs[0]
    with Image.open(first.paths["image"]) as im:
        return (im.height, im.width)


@dataclass
class References:
    """The evaluation references and everything the measures compare against."""

    refs: list[Any]  # factory.data.SampleRef
    samples: list[Any]  # factory.data.Sample, labels loaded
    trainids: np.ndarray  # (N, H, W)
    depths: list[np.ndarray]  # metres, 0 = invalid
    real_features: np.ndarray  # (M, D) of the real set


def load_references(cfg: CompareConfig, features: Callable[[np.ndarray], np.ndarray]) -> References:
    from factory.data.cityscapes import list_cityscapes, load_sample
    from factory.data.labels import id_to_trainid
    from factory.data.sample import DataError
    from factory.eval.depth import reference_depth

    refs = list_cityscapes(cfg.data, cfg.split).refs[: cfg.n]
    check(len(refs) >= 2, "n", f"{cfg.data} split {cfg.split!r} has {len(refs)} images; need >= 2")
    samples = [load_sample(r) for r in refs]
    for s in samples:
        if s.semantic is None:
            raise DataError(s.paths["image"], "has no gtFine labelIds", "compare on a split with labels")
    real_refs = list_cityscapes(cfg.data, cfg.real_split).refs[: cfg.fd_real]
    real_images = np.stack([load_sample(r, labels=False).image for r in real_refs])
    return References(
        refs=refs,
        samples=samples,
        trainids=np.stack([id_to_trainid(np.asarray(s.semantic)) for s in samples]),
        depths=[reference_depth(s) for s in samples],
        real_features=features(real_images),
    )


# ------------------------------------------------------------------------------ sampling


@dataclass
class Generated:
    """One row's images: ``clear[k]`` = the seed-k sample of every reference, ``weather`` = the
    weather samples (and ``weather_prompts`` / ``weather_names`` for each)."""

    clear: list[np.ndarray]
    weather: np.ndarray
    weather_prompts: list[str]
    weather_names: list[str]
    condition_previews: list[np.ndarray]
    failed: list[str]


def generate(
    cfg: CompareConfig,
    folder: Path,
    refs: References,
    *,
    condition_scale: float = 1.0,
    guidance_end: float = 1.0,
) -> Generated:
    """Synthesise one row through the Synthesizer with the ControlNet's recorded recipe.

    Seeds depend on (seed, reference, variant, repeat) only, so every row gets the same noise:
    the rows differ by their conditioning alone. ``condition_scale`` and ``guidance_end`` are
    the Synthesizer's ``controlnet_conditioning_scale`` and ``control_guidance_end`` (the
    sampling knobs ``factory.eval.sweep`` trades fidelity against diversity with).
    """
    from factory.synth import SynthConfig, Synthesizer, WorkItem
    from factory.synth.seeds import sample_seed
    from factory.synth.variants import load_prompt_sets

    sets = load_prompt_sets(cfg.prompts)
    clear, *weathers = sets.variants(["clear", *cfg.weathers])
    synth = Synthesizer.from_config(
        SynthConfig(
            controlnet=str(folder),
            steps=cfg.steps,
            guidance_scale=cfg.guidance,
            scheduler=cfg.scheduler,
            device=cfg.device,
            batch_size=cfg.batch_size,
            controlnet_conditioning_scale=condition_scale,
            control_guidance_end=guidance_end,
        ),
        seed=cfg.seed,
    )
    samples = refs.samples
    items, item_samples = [], []
    for k in range(cfg.seeds):
        for ref, s in zip(refs.refs, samples):
            items.append(WorkItem(ref, clear, sample_seed(cfg.seed, ref.key, f"clear-s{k}")))
            item_samples.append(s)
    for ref, s in list(zip(refs.refs, samples))[: cfg.weather_refs]:
        for v in weathers:
            items.append(WorkItem(ref, v, sample_seed(cfg.seed, ref.key, v.name)))
            item_samples.append(s)
    outputs = synth(items, samples=item_samples)
    failed = [f"{o.key}: {o.error}" for o in outputs if not o.ok]
    if failed:
        raise RuntimeError(f"{folder}: {len(failed)} samples failed, e.g. {failed[0]}")
    images = [o.image for o in outputs if o.image is not None]  # none is missing: failures raised
    n = len(samples)
    clear_imgs = [np.stack(images[k * n : (k + 1) * n]) for k in range(cfg.seeds)]
    w_out = outputs[cfg.seeds * n :]
    w_images = images[cfg.seeds * n :]
    previews = [synth.preview(s) for s in samples[: cfg.grid_refs]]
    return Generated(
        clear=clear_imgs,
        weather=np.stack(w_images) if w_images else np.zeros((0, 1, 1, 3), np.uint8),
        weather_prompts=[o.prompt for o in w_out],
        weather_names=[it.variant.prompt_set for it in items[cfg.seeds * n :]],
        condition_previews=[p for p in previews if p is not None],
        failed=failed,
    )


# ------------------------------------------------------------------------------ scoring


def score(cfg: CompareConfig, inst: Instruments, refs: References, gen: Generated) -> dict[str, float | None]:
    """The five columns (and pixel accuracy) for one row of generated images."""
    from factory.eval.alignment import segmenter_alignment
    from factory.eval.depth import depth_error
    from factory.eval.diversity import mean_pairwise
    from factory.eval.fid import frechet_distance_of

    clear = np.concatenate(gen.clear)
    gts = np.concatenate([refs.trainids] * cfg.seeds)
    align = segmenter_alignment(inst.segmenter, clear, gts)
    row: dict[str, float | None] = {
        "miou": align["miou"],
        "pixel_acc": align["pixel_acc"],
        "si_log": depth_error(inst.depth, clear, refs.depths * cfg.seeds),
        "fd": frechet_distance_of(inst.features(clear), refs.real_features),
        "lpips": mean_pairwise(
            [np.stack([g[i] for g in gen.clear]) for i in range(len(refs.samples))], inst.distance
        ),
        "text": None,
    }
    if cfg.weather_refs:
        m = cfg.weather_refs
        images = np.concatenate([gen.weather, gen.clear[0][:m]])
        clear_prompt = _clear_prompt(cfg)
        prompts = [*gen.weather_prompts, *[clear_prompt] * m]
        row["text"] = inst.text(images, prompts, [*gen.weather_names, *["clear"] * m])
    return row


def _clear_prompt(cfg: CompareConfig) -> str:
    from factory.synth.variants import load_prompt_sets

    return load_prompt_sets(cfg.prompts).variants(["clear"])[0].prompt


def score_real(cfg: CompareConfig, inst: Instruments, refs: References) -> dict[str, float | None]:
    """The real references scored as if generated: the ceilings of mIoU and SILog, and the FD
    of as many real images against the real set (the floor a perfect generator would reach)."""
    from factory.eval.alignment import segmenter_alignment
    from factory.eval.depth import depth_error
    from factory.eval.fid import frechet_distance_of

    images = np.stack([s.image for s in refs.samples])
    align = segmenter_alignment(inst.segmenter, images, refs.trainids)
    return {
        "miou": align["miou"],
        "pixel_acc": align["pixel_acc"],
        "si_log": depth_error(inst.depth, images, refs.depths),
        "fd": frechet_distance_of(inst.features(images), refs.real_features),
        "lpips": None,  # one image per reference: nothing to compare
        "text": None,  # the references are all clear
    }


# ------------------------------------------------------------------------------ outputs


def format_table(rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    """The five columns as an aligned text table (arrows: which way is better)."""
    head = {k: labels[k] + (" ^" if COLUMNS[k][2] else " v") for k in COLUMNS}
    width = max(14, *(len(r) for r in rows)) + 2
    cells = {k: max(10, len(h) + 2) for k, h in head.items()}
    lines = ["conditioning".ljust(width) + "".join(head[k].rjust(cells[k]) for k in COLUMNS)]
    for name, row in rows.items():
        values = []
        for k in COLUMNS:
            v = row["scores"].get(k)
            values.append(("-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}").rjust(cells[k]))
        lines.append(name.ljust(width) + "".join(values))
    lines.append("(^ higher is better, v lower is better)")
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, Any]], labels: dict[str, str], path: Path) -> Path:
    """One bar panel per column, one bar per row (a missing value leaves its bar out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(3 * len(COLUMNS), 3.2))
    for ax, k in zip(axes, COLUMNS):
        vals = [rows[n]["scores"].get(k) for n in names]
        xs = [i for i, v in enumerate(vals) if v is not None]
        ax.bar(xs, [vals[i] for i in xs], color=[f"C{i}" for i in xs])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(labels[k] + (" (higher better)" if COLUMNS[k][2] else " (lower better)"), fontsize=9)
    fig.suptitle("Conditioning comparison (Table 2 columns)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def picture_grid(cfg: CompareConfig, refs: References, gen: Generated, path: Path) -> Path:
    """reference | condition | the clear samples (one per seed) | the weather samples, per reference."""
    from factory.viz import save_grid

    k = min(cfg.grid_refs, len(refs.samples))
    per = len(cfg.weathers)
    rows = []
    for i in range(k):
        row = [refs.samples[i].image]
        if i < len(gen.condition_previews):
            row.append(gen.condition_previews[i])
        row += [g[i] for g in gen.clear]
        if i < cfg.weather_refs:
            row += list(gen.weather[i * per : (i + 1) * per])
        rows.append(row)
    width = max(len(r) for r in rows)
    blank = np.zeros_like(refs.samples[0].image)
    rows = [r + [blank] * (width - len(r)) for r in rows]
    labels = ["reference", "condition"] if gen.condition_previews else ["reference"]
    labels += [f"clear s{j}" for j in range(cfg.seeds)] + (list(cfg.weathers) if cfg.weather_refs else [])
    return save_grid(rows, path, col_labels=labels[:width])


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the comparison (steps 1-5 of the module docstring); returns what compare.json holds."""
    t0 = time.perf_counter()
    # 1-2. instruments, references
    inst = load_instruments(cfg, reference_size(cfg))
    refs = load_references(cfg, inst.features)
    labels = column_labels(inst.real)
    # 3-4. one row per ControlNet (and the two reference rows)
    rows: dict[str, dict[str, Any]] = {REAL_ROW: {"scores": score_real(cfg, inst, refs)}}
    runs = [(NONE_ROW, next(iter(cfg.controlnets.values())), 0.0)] if cfg.unconditioned else []
    runs += [(name, folder, 1.0) for name, folder in cfg.controlnets.items()]
    for name, folder, scale in runs:
        t = time.perf_counter()
        print(
            f"  {name}: sampling {cfg.n * cfg.seeds + cfg.weather_refs * len(cfg.weathers)} images",
            flush=True,
        )
        gen = generate(cfg, Path(folder), refs, condition_scale=scale)
        meta = json.loads((Path(folder) / "lumen_training.json").read_text()) if scale > 0 else {}
        rows[name] = {
            "controlnet": str(folder) if scale > 0 else None,
            "condition": meta.get("condition", {}).get("kind") if scale > 0 else None,
            "train_steps": meta.get("steps"),
            "scores": score(cfg, inst, refs, gen),
            "grid": str(picture_grid(cfg, refs, gen, cfg.out / f"grid_{file_part(name)}.png")),
            "seconds": round(time.perf_counter() - t, 1),
        }
    # 5. outputs
    table = format_table(rows, labels)
    report = {
        "columns": column_report(inst),
        "rows": rows,
        "table": table,
        "plot": str(plot(rows, labels, cfg.out / "compare.png")),
        "settings": {
            "data": str(cfg.data),
            "split": cfg.split,
            "n_references": len(refs.samples),
            "seeds": cfg.seeds,
            "weather_refs": cfg.weather_refs,
            "weathers": list(cfg.weathers),
            "prompts": str(cfg.prompts),
            "fd_real": {"split": cfg.real_split, "n": len(refs.real_features)},
            "sampler": {"scheduler": cfg.scheduler, "steps": cfg.steps, "guidance": cfg.guidance},
            "seed": cfg.seed,
            "si_log": "100 * sqrt(mean(d^2) - mean(d)^2), d = log pred - log gt, per image, averaged",
            "not_implemented": "TIFA (needs a question-generating LLM and a VQA model)",
        },  # fmt: skip
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(cfg.out / "compare.json", json.dumps(report, indent=2))
    return report


def file_part(name: str) -> str:
    """``name`` as a file name part: letters, digits, '-' and '_' kept, anything else '_'."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# ------------------------------------------------------------------------------ CLI


def _named_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=FOLDER, e.g. layout=outputs/controlnet/layout"
        )
    return name, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m factory.eval.compare",
        description="Table 2 of the LUMEN paper for trained ControlNets: mIoU, SILog, FD/FID, LPIPS and text "
        "controllability of samples made by the Synthesizer; prints the table, writes compare.json + compare.png.",
    )
    a = p.add_argument
    a("--controlnet", type=_named_folder, action="append", required=True, metavar="NAME=FOLDER",
      help="a trained ControlNet folder (repeat for each condition)")  # fmt: skip
    a("--data", type=Path, required=True, help="Cityscapes-layout root (with labels, disparity, camera)")
    a("--out", type=Path, required=True, help="output folder")
    add_eval_arguments(p)
    return p


def add_eval_arguments(p: argparse.ArgumentParser, *, steps_flag: str = "--steps") -> None:
    """The flags of everything but the ControlNets: references, sampling, instruments, threads.

    Shared with ``factory.eval.sweep`` (whose ``--steps`` is its training budget, so it names the
    sampling steps ``steps_flag="--sample-steps"``); ``eval_config`` reads them back.
    """
    a = p.add_argument
    a("--split", default="val", help="split of the evaluated references")
    a("--real-split", default="train", help="split of the real images FD compares against")
    a("--fd-real", type=int, default=500, help="at most this many real images for FD")
    a("--n", type=int, default=8, help="references")
    a("--seeds", type=int, default=2, help="clear samples per reference (diversity: >= 2)")
    a("--weather-refs", type=int, default=4, help="references also generated per weather prompt")
    a(
        "--weathers",
        nargs="+",
        default=["fog", "night", "rain", "snow"],
        help="prompt sets (and judge classes)",
    )
    a(
        "--prompts",
        type=Path,
        default=Path("configs/prompts/procedural.yaml"),
        help="prompt file (with 'clear')",
    )
    a(steps_flag, dest="sample_steps", metavar="STEPS", type=int, default=20, help="sampling steps")
    a("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    a("--scheduler", default="ddim", choices=["ddim", "unipc", "euler"], help="sampler")
    a("--batch-size", type=int, default=8, help="samples per Synthesizer batch")
    a("--device", default="cpu", help="sampling device (cpu, cuda, auto)")
    a("--seed", type=int, default=0, help="sampling seed: every row gets the same noise")
    a("--no-unconditioned", action="store_true", help="skip the 'no condition' row")
    a(
        "--segmenter",
        type=Path,
        default=Path("outputs/judges/segmenter"),
        help="judge segmenter (trained if missing)",
    )
    a(
        "--depth-judge",
        type=Path,
        default=Path("outputs/judges/depth"),
        help="offline depth judge (trained if missing)",
    )
    a(
        "--weather-judge",
        type=Path,
        default=Path("outputs/judges/weather"),
        help="offline weather judge (trained if missing)",
    )
    a("--seg-model", type=Path, help="real: transformers 19-class Cityscapes segmentation folder")
    a("--depth-model", type=Path, help="real: transformers depth-estimation folder (DPT, Depth Anything)")
    a(
        "--depth-output",
        default="auto",
        choices=["auto", "metric", "relative"],
        help="what --depth-model predicts",
    )
    a("--fid-inception", type=Path, help="real: pt_inception-2015-12-05 weights (then the column is FID)")
    a("--lpips-backbone", type=Path, help="real: torchvision AlexNet state dict (then the column is LPIPS)")
    a("--lpips-linear", type=Path, help="real: LPIPS linear weights (alex.pth of the LPIPS release)")
    a("--clip", type=Path, help="real: transformers CLIP folder (then the column is CLIP score)")
    a("--threads", type=int, default=2, help="torch CPU threads")


def eval_config(args: argparse.Namespace, controlnets: dict[str, Path], out: Path) -> CompareConfig:
    """A CompareConfig from the flags of ``add_eval_arguments`` and the ControlNets to sample."""
    return CompareConfig(
        controlnets=controlnets, data=args.data, out=out, split=args.split,
        real_split=args.real_split, fd_real=args.fd_real, n=args.n, seeds=args.seeds,
        weather_refs=args.weather_refs, weathers=list(args.weathers), prompts=args.prompts, steps=args.sample_steps,
        guidance=args.guidance, scheduler=args.scheduler, batch_size=args.batch_size, device=args.device,
        seed=args.seed, unconditioned=not args.no_unconditioned, segmenter=args.segmenter,
        depth_judge=args.depth_judge, weather_judge=args.weather_judge, seg_model=args.seg_model,
        depth_model=args.depth_model, depth_output=args.depth_output, fid_inception=args.fid_inception,
        lpips_backbone=args.lpips_backbone, lpips_linear=args.lpips_linear, clip=args.clip,
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    names = [n for n, _ in args.controlnet]
    check(len(set(names)) == len(names), "controlnets", f"a name is given twice: {names}")
    return eval_config(args, dict(args.controlnet), args.out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from factory.config import ConfigError

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    report = compare(cfg)
    print(report["table"])
    print(f"written: {cfg.out / 'compare.json'}, {report['plot']}")
    return report


__all__ = ["COLUMNS", "CompareConfig", "build_parser", "compare", "format_table", "main"]


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
