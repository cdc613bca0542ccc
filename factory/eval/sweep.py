"""The fidelity-diversity sweep: which layout and which sampling knobs make the best trade-off?

Why: a stronger condition makes samples follow the reused labels more closely (alignment, the
fidelity the factory ships labels on) and makes the seeds of one layout look more alike
(diversity, what makes many variants per layout worth generating). Where to sit on that curve
is a choice, and a choice wants the curve measured: this trains and samples the variants with
the factory's own commands and scores them with ``factory.eval.compare``'s instruments, on the
same references and seeds, so that the points differ by the swept setting alone.

Two axes:

A. layout variants, each with its own ControlNet trained at one fixed budget (same ``--steps``,
   ``--train-seed``, data and training config for every variant): the number N of PCA
   components (``--components``, on the first backbone: ``sd-unet`` when given) and the layout
   backbone (``--backbones``, each at the largest N). A backbone name is passed on unchanged as
   ``layout.backbone`` to the PCA fit and to ``condition.layout.backbone`` of the trainer; what
   names exist is ``factory.layout``'s business (an unknown one fails before any work).
B. sampling knobs on one ControlNet (the largest-N variant of the first backbone, or
   ``--controlnet FOLDER``): every ``--scales`` x ``--guidance-ends`` pair, the Synthesizer's
   ``controlnet_conditioning_scale`` and ``control_guidance_end``.

The run, top to bottom (``sweep``):

1. check the inputs before any work: every variant's trainer config loads and validates with
   the sweep's overrides (so an unknown backbone fails here), ``--out`` was not made with
   another training budget (``sweep_plan.json``);
2. load the instruments and the references once (``compare.load_instruments`` /
   ``compare.load_references``: judges trained when missing, as compare does);
3. per backbone: fit the PCA once, at the largest N, with the trainer's own ``condition.layout``
   and training images (``factory.train.layout_pca.fit``); each smaller N is the fit's leading
   components (``PCAArtifact.leading``, see below);
4. per layout variant: train its ControlNet (``factory.train.controlnet.main`` with key=value
   overrides), then sample and score it at scale 1, guidance end 1;
5. per (scale, guidance end): sample and score the axis-B ControlNet; plus two reference
   points: ``real reference`` (the real images: the mIoU ceiling) and ``no condition`` (scale
   0: the base model alone, the diversity the ControlNet starts from);
6. the Pareto front and its knee; write ``sweep.json``, ``sweep.md`` (table and recommendation)
   and ``pareto.png``.

N by truncation, not refits: the PCA is exact (``StreamingPCA``: one ``eigh`` of a covariance
that does not depend on N; components in decreasing-eigenvalue order; each component's sign
fixed on its own), so the N-component fit of a sample is, bit for bit, the first N components
of the largest fit of the same sample (tests/layout/test_pca.py checks it). One feature pass
per backbone instead of one per N, and every N sees exactly the same sampled vectors.

The front and the knee (``pareto_front``, ``knee``): a point is (diversity, alignment), both
higher-is-better; it is on the front when no other point is at least as good on both and
better on one (equal points are all kept). The knee is the front point farthest above the
chord joining the front's two ends, after scaling each axis to [0, 1] over the front: in those
units the ends are (0, 1) and (1, 0) and the height above the chord is (x + y - 1) / sqrt(2).
Ties go to the higher alignment, then to the earlier point. A front with no point above its
chord (two points, a straight or a sagging front) has no knee; the recommendation is then its
most aligned end: fidelity first, since the factory ships the reference's labels with every
image. The reference points are drawn but are not candidates.

Resuming: a variant whose ControlNet folder holds ``lumen_training.json`` at ``--steps`` is not
trained again; an unfinished one resumes from the trainer's own latest checkpoint; a PCA whose
two files exist is reused. A point whose ``points/<name>.json`` matches its fingerprint (the
ControlNet's content hash, the knobs, the sampling and reference settings, the instruments) is
not sampled again, so changing ``--n`` or ``--sample-steps`` rescores without retraining.

Usage::

    python -m factory.eval.sweep --data outputs/city/cityscapes --out outputs/sweep \\
        --components 5 10 20 --backbones sd-unet --scales 0.25 0.5 0.75 1.0 \\
        --guidance-ends 0.4 0.7 1.0 --steps 150 [--controlnet FOLDER] [--n 8 --seeds 2] ...
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from factory.atomic import atomic_write_json, atomic_write_text, digest, file_digest
from factory.cli import run_cli
from factory.config import ConfigError, check, to_dict
from factory.eval import compare
from factory.eval.compare import COLUMNS, NONE_ROW, REAL_ROW, CompareConfig

# The overrides the sweep sets itself: a --train-overrides entry for one of them would make the
# variants differ by more than the swept setting, or break the folder layout resuming relies on.
SWEEP_KEYS = (
    "out",
    "steps",
    "seed",
    "base_model",
    "data.kind",
    "data.root",
    "threads",
    "condition.kind",
    "condition.layout.model",
    "condition.layout.backbone",
    "condition.layout.n_components",
    "condition.layout.pca_samples",
    "condition.layout.pca",
    "condition.layout.store",
)
PLAN_FILE = "sweep_plan.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------ front and knee


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates higher-is-better.

    ``b`` dominates ``a`` when it is >= on both coordinates and > on one, so equal points do not
    dominate each other and are all kept. Sorted by the first coordinate, then by index.
    """
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(u >= x and v >= y and (u > x or v > y) for u, v in points)
    ]
    return sorted(front, key=lambda i: (points[i][0], i))


def knee(points: Sequence[tuple[float, float]]) -> int:
    """The index of the knee of ``points`` = (diversity, alignment): the module docstring's rule.

    On the front scaled to [0, 1] per axis, the point with the largest x + y - 1 > 0 (height
    above the chord between the ends); ties to the higher alignment, then the earlier index.
    Without such a point, the front's most aligned end (the earlier index among equals).
    """
    if not points:
        raise ValueError("knee of no points")
    front = pareto_front(points)
    xs = [points[i][0] for i in front]
    ys = [points[i][1] for i in front]

    def scaled(v: float, lo: float, hi: float) -> float:
        return (v - lo) / (hi - lo) if hi > lo else 0.0

    height = {
        i: scaled(points[i][0], min(xs), max(xs)) + scaled(points[i][1], min(ys), max(ys)) - 1.0
        for i in front
    }
    above = [i for i in front if height[i] > 1e-12]
    if above:
        return min(above, key=lambda i: (-round(height[i], 12), -points[i][1], i))
    return min(front, key=lambda i: (-points[i][1], i))


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class Variant:
    """A layout variant: N components of a backbone's PCA, on the N axis or the backbone axis.

    A backbone-axis variant has the largest N, capped at its features' channel count
    (``feature_channels``; a PCA cannot keep more components than channels): its name is the
    backbone's alone and its N is recorded with its point.
    """

    backbone: str
    n: int
    axis: Literal["components", "backbone"] = "components"

    @property
    def name(self) -> str:
        return f"{self.backbone}-n{self.n}" if self.axis == "components" else self.backbone


def layout_variants(
    components: Sequence[int], backbones: Sequence[str], channels: Mapping[str, int] | None = None
) -> list[Variant]:
    """Axis A: every N on the first backbone (sd-unet when given), every other one at the largest
    N, capped at its feature channels when ``channels`` knows them (``vae-latent``: the VAE's 4)."""
    if not components:
        return []
    first = "sd-unet" if "sd-unet" in backbones else backbones[0]
    top = max(components)
    known = channels or {}
    return [Variant(first, n) for n in sorted(components)] + [
        Variant(b, min(top, known.get(b, top)), "backbone") for b in backbones if b != first
    ]


@functools.cache
def feature_channels(base_model: str, backbone: str) -> int | None:
    """The feature channels of a backbone that reads the base model (None for the ViT ones,
    whose folders come with the training overrides: a PCA there keeps its N)."""
    if backbone not in ("sd-unet", "sd-unet-random", "vae-latent"):
        return None
    from factory.layout import LayoutConfig, build_backbone

    return build_backbone(LayoutConfig(model=base_model, backbone=backbone, device="cpu")).channels  # type: ignore[arg-type]


def variant_folder(out: Path, v: Variant) -> Path:
    """Where variant ``v``'s ControlNet is trained (and found again by a rerun)."""
    return out / "controlnets" / v.name


@dataclass(frozen=True)
class Point:
    """One scored setting: a ControlNet sampled at (scale, guidance end)."""

    name: str
    axes: tuple[str, ...]  # "layout" and/or "sampling", or "reference"
    controlnet: Path
    scale: float = 1.0
    guidance_end: float = 1.0
    variant: Variant | None = None  # None: the --controlnet folder (or a reference point)


@dataclass
class SweepConfig:
    """What to sweep and at which budget; validated on construction (errors name the field).

    base_model / train_config / train_overrides: the training recipe every variant shares (the
      trainer's YAML and key=value overrides; the sweep sets the keys in SWEEP_KEYS itself).
    steps / train_seed: the training budget, the same for every variant.
    pca_samples: feature vectors each backbone's PCA is fitted on (all training images).
    components / backbones: axis A (an empty components list: no layout axis).
    controlnet: axis B on this trained folder instead of the largest-N first-backbone variant.
    scales / guidance_ends: axis B (empty: no sampling axis).
    eval: references, sampling and instruments, as factory.eval.compare takes them.
    """

    data: Path
    out: Path
    eval: CompareConfig
    base_model: str = "models/procedural-base-v1"
    train_config: Path = Path("configs/train/procedural_controlnet_layout.yaml")
    train_overrides: list[str] = field(default_factory=list)
    steps: int = 150
    train_seed: int = 0
    pca_samples: int = 40000
    components: list[int] = field(default_factory=lambda: [5, 10, 20])
    backbones: list[str] = field(default_factory=lambda: ["sd-unet"])
    controlnet: Path | None = None
    scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    guidance_ends: list[float] = field(default_factory=lambda: [0.4, 0.7, 1.0])
    threads: int = 2

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.pca_samples >= 2, "pca_samples", f"must be >= 2, got {self.pca_samples}")
        check(
            all(n >= 1 for n in self.components), "components", f"each N must be >= 1, got {self.components}"
        )
        check(
            len(set(self.components)) == len(self.components),
            "components",
            f"an N is given twice: {self.components}",
        )
        check(
            len(set(self.backbones)) == len(self.backbones),
            "backbones",
            f"a backbone is given twice: {self.backbones}",
        )
        check(not self.components or bool(self.backbones), "backbones", "give at least one (e.g. sd-unet)")
        check(all(s >= 0 for s in self.scales), "scales", f"each must be >= 0, got {self.scales}")
        check(
            all(0 < e <= 1 for e in self.guidance_ends),
            "guidance_ends",
            f"each must be in (0, 1], got {self.guidance_ends}",
        )
        check(bool(self.scales) == bool(self.guidance_ends), "scales/guidance_ends",
              "give both (the sampling axis is their grid) or neither")  # fmt: skip
        check(bool(self.components) or self.controlnet is not None, "components",
              "is empty (no layout axis): then give --controlnet FOLDER for the sampling axis")  # fmt: skip
        check(bool(self.components) or bool(self.scales), "components/scales", "nothing to sweep")
        for item in self.train_overrides:
            key, sep, _ = item.partition("=")
            check(bool(sep), "train_overrides", f"{item!r} must look like key.sub=value")
            check(key.strip() not in SWEEP_KEYS, "train_overrides",
                  f"{key.strip()} is set by the sweep itself (the same for every variant, or swept)")  # fmt: skip
        if self.controlnet is not None:
            from factory.train.recipe import ControlNetRecipe

            check(self.controlnet.is_dir() and ControlNetRecipe.load(self.controlnet) is not None, "controlnet",
                  f"{self.controlnet} holds no lumen_training.json (fix: a folder written by "
                  "python -m factory.train.controlnet)")  # fmt: skip
        # what a backbone may be, and what it needs (dinov2: its folder, given as a
        # condition.layout.dinov2 train override), is the trainer config's to say
        for v in self.variants():
            try:
                trainer_config(self, v)
            except ConfigError as e:
                raise ConfigError(f"backbones: variant {v.name}: {e}") from None

    # -------------------------------------------------------------- what the sweep holds
    def variants(self) -> list[Variant]:
        channels = {
            b: c for b in self.backbones if (c := feature_channels(str(self.base_model), b)) is not None
        }
        return layout_variants(self.components, self.backbones, channels)

    def pca_path(self, backbone: str, n: int | None = None) -> Path:
        """A PCA artifact of ``backbone``: as fitted (at the largest N; ``n`` None) or its leading n."""
        return self.out / "pca" / backbone / ("fitted" if n is None else f"n{n}")

    def variant_pca(self, v: Variant) -> Path:
        return self.pca_path(v.backbone, v.n if v.axis == "components" else None)

    def sampled(self) -> tuple[Path, Variant | None] | None:
        """The axis-B ControlNet and its variant (None for --controlnet), if there is an axis B."""
        if not self.scales:
            return None
        if self.controlnet is not None:
            return self.controlnet, None
        v = self.variants()[len(self.components) - 1]  # sorted N: the first backbone at the largest
        return variant_folder(self.out, v), v

    def points(self) -> list[Point]:
        """Every point to score, layout variants first; a sampling point at (1, 1) on a variant
        is that variant's layout point (the same images), listed once with both axes."""
        points = {
            v.name: Point(v.name, ("layout",), variant_folder(self.out, v), variant=v)
            for v in self.variants()
        }
        b = self.sampled()
        if b is not None:
            folder, v = b
            for s in self.scales:
                for e in self.guidance_ends:
                    if v is not None and s == 1.0 and e == 1.0:
                        points[v.name] = Point(v.name, ("layout", "sampling"), folder, variant=v)
                        continue
                    name = f"{v.name if v else 'controlnet'} s{s:g} e{e:g}"
                    points[name] = Point(name, ("sampling",), folder, s, e, v)
        return list(points.values())

    def plan(self) -> dict[str, Any]:
        """What every trained variant depends on; a rerun into the same --out must match it."""
        return {
            "base_model": self.base_model,
            "data": str(self.data),
            "train_config": str(self.train_config),
            "train_config_digest": file_digest(self.train_config),
            "train_overrides": list(self.train_overrides),
            "steps": self.steps,
            "train_seed": self.train_seed,
            "pca_samples": self.pca_samples,
        }


# ------------------------------------------------------------------------------ the stages


def check_plan(cfg: SweepConfig) -> None:
    """Refuse an --out made with another training budget (its ControlNets would be reused)."""
    path = cfg.out / PLAN_FILE
    plan = cfg.plan()
    if path.is_file():
        before = json.loads(path.read_text())
        diffs = [f"{k}: {before.get(k)!r} there, {plan[k]!r} now" for k in plan if before.get(k) != plan[k]]
        if diffs:
            raise ConfigError(
                f"out: {cfg.out} holds a sweep trained with other settings ({'; '.join(diffs)}); fix: give "
                "another --out, or rerun with the training flags it was made with"
            )
    atomic_write_json(path, plan)


def train_args(cfg: SweepConfig, v: Variant) -> list[str]:
    """The trainer's command line for variant ``v``: the shared recipe, its layout, the budget.

    Validation grids are off (the sweep samples the ControlNets itself); a --train-overrides
    ``validation.every=0`` brings the final one back.
    """
    return [
        "--config", str(cfg.train_config), f"out={variant_folder(cfg.out, v)}", f"base_model={cfg.base_model}",
        "data.kind=cityscapes", f"data.root={cfg.data}", f"steps={cfg.steps}", f"seed={cfg.train_seed}",
        f"threads={cfg.threads}", "validation.every=-1", "condition.kind=layout",
        f"condition.layout.model={cfg.base_model}", f"condition.layout.backbone={v.backbone}",
        f"condition.layout.n_components={v.n}", f"condition.layout.pca_samples={cfg.pca_samples}",
        f"condition.layout.pca={cfg.variant_pca(v)}", "condition.layout.store=null",
        *cfg.train_overrides,
    ]  # fmt: skip


def trainer_config(cfg: SweepConfig, v: Variant) -> Any:
    """Variant ``v``'s ControlNetTrainConfig, validated (what ``train_args`` will run)."""
    from factory.config import load_config
    from factory.train.controlnet import ControlNetTrainConfig

    args = train_args(cfg, v)
    return load_config(ControlNetTrainConfig, args[1], args[2:], config_dir="configs/train")


def trained(folder: Path, steps: int) -> bool:
    """Whether ``folder`` holds a finished ControlNet of ``steps`` steps (its recipe written last)."""
    from factory.train.recipe import RESULT_FILE

    path = folder / RESULT_FILE
    return (
        path.is_file()
        and (folder / WEIGHTS_FILE).is_file()
        and json.loads(path.read_text()).get("steps") == steps
    )


def fit_pcas(cfg: SweepConfig) -> list[str]:
    """Step 3: one PCA fit per backbone at the largest N, its leading components per smaller N.

    Returns what was fitted (empty when every artifact was there already).
    """
    from factory.layout import LayoutError, PCAArtifact
    from factory.layout.pca import pca_files
    from factory.train import layout_pca

    done = []
    for backbone in dict.fromkeys(v.backbone for v in cfg.variants()):
        fitted = cfg.pca_path(backbone)
        ns = [v.n for v in cfg.variants() if v.backbone == backbone and v.axis == "components"]
        if not all(p.is_file() for p in pca_files(fitted)):
            # the trainer's own layout config and training images, at the largest N: a PCA
            # applies only to the features it was fitted on
            top = max(v.n for v in cfg.variants() if v.backbone == backbone)
            train_cfg = trainer_config(
                cfg, next(v for v in cfg.variants() if v.backbone == backbone and v.n == top)
            )
            layout = {
                k: x for k, x in to_dict(train_cfg.condition.layout).items() if k not in ("pca", "store")
            }
            print(f"  fitting the {backbone} PCA ({top} components, {cfg.pca_samples} vectors)", flush=True)
            layout_pca.fit(cfg.base_model, cfg.data, fitted, split=train_cfg.data.split, samples=cfg.pca_samples,
                           limit=train_cfg.data.limit, layout=layout)  # fmt: skip
            done.append(backbone)
        full = PCAArtifact.load(fitted)
        for n in ns:
            if full.n_components < n:
                raise LayoutError(
                    f"the {backbone} PCA has {full.n_components} components (its features' channels, or "
                    f"the rank of the sampled vectors), not {n}; fix: drop N={n} from --components, or "
                    "give --pca-samples more vectors"
                )
            if not all(p.is_file() for p in pca_files(cfg.pca_path(backbone, n))):
                full.leading(n).save(cfg.pca_path(backbone, n))
    return done


def train(cfg: SweepConfig, v: Variant) -> bool:
    """Step 4's training: the variant's ControlNet (resumed from its checkpoints); False if done."""
    from factory.train import controlnet

    folder = variant_folder(cfg.out, v)
    if trained(folder, cfg.steps):
        return False
    print(
        f"  training {v.name}: $ python -m factory.train.controlnet {' '.join(train_args(cfg, v))}",
        flush=True,
    )
    controlnet.main(train_args(cfg, v))
    return True


def controlnet_hash(folder: Path) -> str | None:
    from factory.train.recipe import RESULT_FILE

    return json.loads((folder / RESULT_FILE).read_text()).get("controlnet_content_hash")


def instrument_fingerprint(cfg: CompareConfig, inst: compare.Instruments) -> dict[str, Any]:
    """What makes two scorings comparable: the instruments (and the judges' weights)."""
    from factory.eval.instrument import instrument_files

    judges = {
        k: file_digest(instrument_files(getattr(cfg, k))[0])
        for k in ("segmenter", "depth_judge", "weather_judge")
    }
    return {"described": inst.described, "judges": judges}


def eval_settings(cfg: CompareConfig) -> dict[str, Any]:
    """The sampling and reference settings of every point (compare's config without its rows)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("controlnets", "out", "unconditioned")}


def score_point(
    cfg: SweepConfig, p: Point, inst: compare.Instruments, refs: compare.References, instruments: dict
) -> tuple[dict[str, Any], bool]:
    """Step 4/5's scoring of one point, or its stored result when the fingerprint matches.

    Returns (the point's record, whether it was sampled now).
    """
    path = cfg.out / "points" / f"{compare.file_part(p.name)}.json"
    fingerprint = digest([controlnet_hash(p.controlnet), p.scale, p.guidance_end, eval_settings(cfg.eval),
                          instruments])  # fmt: skip
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == fingerprint:
            return stored, False
    t = time.perf_counter()
    gen = compare.generate(cfg.eval, p.controlnet, refs, condition_scale=p.scale, guidance_end=p.guidance_end)
    meta = json.loads((p.controlnet / "lumen_training.json").read_text())
    conditioned = "reference" not in p.axes
    condition = meta["condition"]["kind"]
    layout = meta["config"]["condition"].get("layout") or {}
    record = {
        "name": p.name,
        "axes": list(p.axes),
        "condition": condition if conditioned else None,
        "backbone": layout.get("backbone") if conditioned and condition == "layout" else None,
        "n_components": meta["condition"]["channels"] if conditioned and condition == "layout" else None,
        "scale": p.scale,
        "guidance_end": p.guidance_end,
        "controlnet": str(p.controlnet) if conditioned else None,
        "train_steps": meta.get("steps") if conditioned else None,
        "scores": compare.score(cfg.eval, inst, refs, gen),
        "grid": str(compare.picture_grid(cfg.eval, refs, gen, cfg.out / "grids" / f"{compare.file_part(p.name)}.png")),
        "seconds": round(time.perf_counter() - t, 1),
        "fingerprint": fingerprint,
    }  # fmt: skip
    atomic_write_json(path, record)
    return record, True


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run the sweep (steps 1-6 of the module docstring); returns what sweep.json holds."""
    t0 = time.perf_counter()
    # 1. Check inputs before any work (the configs checked themselves on construction)
    if cfg.variants():
        check_plan(cfg)
    # 2. Instruments and references, once
    inst = compare.load_instruments(cfg.eval, compare.reference_size(cfg.eval))
    refs = compare.load_references(cfg.eval, inst.features)
    instruments = instrument_fingerprint(cfg.eval, inst)
    labels = compare.column_labels(inst.real)
    # 3. PCAs
    fitted = fit_pcas(cfg) if cfg.variants() else []
    # 4-5. Points (a variant's ControlNet is trained just before its first point)
    points = cfg.points()
    sampled = cfg.sampled()
    if cfg.eval.unconditioned:
        folder = sampled[0] if sampled else points[0].controlnet
        points.append(Point(NONE_ROW, ("reference",), folder, scale=0.0))
    records: list[dict[str, Any]] = []
    trained_now: list[str] = []
    scored_now: list[str] = []
    for i, p in enumerate(points, 1):
        t = time.perf_counter()
        if p.variant is not None and train(cfg, p.variant):
            trained_now.append(p.variant.name)
        record, new = score_point(cfg, p, inst, refs, instruments)
        records.append(record)
        if new:
            scored_now.append(p.name)
        elapsed = time.perf_counter() - t0
        left = elapsed / i * (len(points) - i)
        how = "cached" if not new else f"{time.perf_counter() - t:.0f} s"
        print(f"[{i}/{len(points)}] {p.name}: {how}; elapsed {_clock(elapsed)}, about {_clock(left)} left "
              f"(mIoU {record['scores']['miou']:.3f}, diversity {record['scores']['lpips']:.3f})", flush=True)  # fmt: skip
    # 6. Front, knee, outputs
    candidates = [r for r in records if "reference" not in r["axes"] and _finite(r)]
    xy = [(r["scores"]["lpips"], r["scores"]["miou"]) for r in candidates]
    front = [candidates[i]["name"] for i in pareto_front(xy)] if xy else []
    best = candidates[knee(xy)] if xy else None
    real = compare.score_real(cfg.eval, inst, refs)
    report = {
        "points": records,
        "references": {
            REAL_ROW: real,
            **{r["name"]: r["scores"] for r in records if "reference" in r["axes"]},
        },
        "columns": compare.column_report(inst),
        "front": front,
        "knee": best["name"] if best else None,
        "knee_rule": "on the Pareto front of (diversity, alignment) scaled to [0, 1] per axis, the point "
        "farthest above the chord between the front's ends (x + y - 1 > 0); none: the most aligned end",
        "recommendation": recommendation(best) if best else None,
        "settings": {
            "training": cfg.plan(),
            "sampling": eval_settings(cfg.eval),
            "components": cfg.components,
            "backbones": cfg.backbones,
            "scales": cfg.scales,
            "guidance_ends": cfg.guidance_ends,
            "controlnet": str(cfg.controlnet) if cfg.controlnet else None,
        },
        "this_run": {"pca_fitted": fitted, "trained": trained_now, "scored": scored_now},
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    report["plot"] = str(plot(report, labels, cfg.out / "pareto.png"))
    atomic_write_text(cfg.out / "sweep.md", markdown(report, labels))
    atomic_write_json(cfg.out / "sweep.json", report)
    return report


def _finite(record: dict[str, Any]) -> bool:
    s = record["scores"]
    return all(isinstance(s.get(k), float) and math.isfinite(s[k]) for k in ("miou", "lpips"))


def recommendation(record: dict[str, Any]) -> dict[str, Any]:
    """The knee's settings, as a generation config takes them (synth.*)."""
    return {
        "point": record["name"],
        "backbone": record["backbone"],
        "n_components": record["n_components"],
        "synth.controlnet": record["controlnet"],
        "synth.controlnet_conditioning_scale": record["scale"],
        "synth.control_guidance_end": record["guidance_end"],
    }


# ------------------------------------------------------------------------------ outputs


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def markdown(report: dict[str, Any], labels: dict[str, str]) -> str:
    """sweep.md: the points as a table (front and knee marked), the references, the recommendation."""
    cols = [*COLUMNS, "pixel_acc"]
    names = {**labels, "pixel_acc": "pixel acc"}
    arrow = {k: (" ^" if COLUMNS[k][2] else " v") if k in COLUMNS else " ^" for k in cols}
    head = [
        "point",
        "axes",
        "backbone",
        "N",
        "scale",
        "guidance end",
        *(names[k] + arrow[k] for k in cols),
        "front",
    ]
    lines = ["# Fidelity-diversity sweep", ""]
    t = report["settings"]["training"]
    s = report["settings"]["sampling"]
    lines += [
        f"Training budget per variant: {t['steps']} steps, seed {t['train_seed']}, PCA on {t['pca_samples']} "
        f"vectors, base model `{t['base_model']}`, data `{t['data']}`, config `{t['train_config']}`"
        + (f" + `{' '.join(t['train_overrides'])}`" if t["train_overrides"] else "") + ".",
        f"Scored on {s['n']} `{s['split']}` references x {s['seeds']} seeds, {s['steps']} {s['scheduler']} steps, "
        f"guidance {s['guidance']}, seed {s['seed']}. Instruments: "
        + "; ".join(f"{c['label']}: {c['instrument']}" for c in report["columns"]) + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]  # fmt: skip
    for r in report["points"]:
        mark = "knee" if r["name"] == report["knee"] else "yes" if r["name"] in report["front"] else ""
        row = [r["name"], ", ".join(r["axes"]), r["backbone"] or "-", str(r["n_components"] or "-"), f"{r['scale']:g}",
               f"{r['guidance_end']:g}", *(_cell(r["scores"].get(k)) for k in cols), mark]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    real = report["references"][REAL_ROW]
    lines += [
        "",
        f"Real references (the ceiling of {labels['miou']} and {labels['si_log']}): "
        + ", ".join(f"{names[k]} {_cell(real.get(k))}" for k in cols if real.get(k) is not None) + ".",
        "(^ higher is better, v lower is better.) Knee: " + report["knee_rule"] + ".",
        "",
        "## Recommendation",
        "",
    ]  # fmt: skip
    rec = report["recommendation"]
    if rec is None:
        lines.append("No point has finite alignment and diversity: nothing to recommend.")
    else:
        lines.append(
            f"The knee is **{rec['point']}** (backbone {rec['backbone']}, N = {rec['n_components']}): generate with "
            f"`synth.controlnet={rec['synth.controlnet']} synth.controlnet_conditioning_scale="
            f"{rec['synth.controlnet_conditioning_scale']:g} synth.control_guidance_end="
            f"{rec['synth.control_guidance_end']:g}`."
        )  # fmt: skip
    lines += ["", f"![alignment vs diversity]({Path(report['plot']).name})", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], labels: dict[str, str], path: Path) -> Path:
    """pareto.png: alignment vs diversity, each point labelled, the front drawn, the knee marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    style = {"layout": ("C0", "o"), "sampling": ("C1", "s"), "reference": ("0.5", "x")}
    seen: set[str] = set()
    names: dict[tuple[float, float], list[str]] = {}  # equal points share one label
    for r in report["points"]:
        if not _finite(r):
            continue
        axis = "layout" if "layout" in r["axes"] else r["axes"][0]
        colour, marker = style[axis]
        x, y = r["scores"]["lpips"], r["scores"]["miou"]
        ax.scatter([x], [y], c=colour, marker=marker, label=None if axis in seen else axis, zorder=3)
        seen.add(axis)
        names.setdefault((x, y), []).append(r["name"])
    for xy, same in names.items():
        ax.annotate("\n".join(same), xy, textcoords="offset points", xytext=(4, 4), fontsize=7, va="bottom")
    by_name = {r["name"]: r for r in report["points"]}
    front = [(by_name[n]["scores"]["lpips"], by_name[n]["scores"]["miou"]) for n in report["front"]]
    if front:
        ax.plot(*zip(*front), "k-", lw=1, zorder=2, label="Pareto front")
        ax.plot(*zip(front[0], front[-1]), "k:", lw=0.8, zorder=1, label="chord (knee = farthest above)")
    if report["knee"]:
        k = by_name[report["knee"]]["scores"]
        ax.scatter([k["lpips"]], [k["miou"]], s=220, facecolors="none", edgecolors="red", lw=2, zorder=4,
                   label=f"knee: {report['knee']}")  # fmt: skip
    real = report["references"][REAL_ROW].get("miou")
    if real is not None and math.isfinite(real):
        ax.axhline(real, color="0.6", ls="--", lw=0.8, label=f"real images' {labels['miou']}")
    ax.set_xlabel(f"diversity: {labels['lpips']} between seeds (higher = more diverse)")
    ax.set_ylabel(f"alignment: {labels['miou']} vs the reused labels (higher = more faithful)")
    ax.margins(0.15)  # room for the labels
    ax.ticklabel_format(useOffset=False)
    ax.set_title("Fidelity-diversity sweep", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m factory.eval.sweep",
        description="The fidelity-diversity sweep: ControlNets trained per layout variant (PCA components N, "
        "layout backbone) at one budget, and one ControlNet sampled per (conditioning scale, guidance end); "
        "every point scored with factory.eval.compare's instruments. Writes sweep.json, sweep.md (table and "
        "the knee's settings) and pareto.png (alignment vs diversity, front and knee). Reruns resume.",
        epilog="Knee: on the Pareto front of (diversity, alignment), both scaled to [0, 1] over the front, "
        "the point farthest above the chord between the front's two ends; none above it: the most aligned "
        "end. Resume: a ControlNet with lumen_training.json at --steps is not retrained (an unfinished one "
        "resumes from its checkpoints) and a point whose points/<name>.json matches its settings is not "
        "sampled again; --out remembers the training flags (sweep_plan.json) and refuses others. "
        "Training runs on accelerate's device; --device is the sampling device.",
    )
    a = p.add_argument
    a("--data", type=Path, required=True, help="Cityscapes-layout root: train split for PCA and training, "
      "--split for the references")  # fmt: skip
    a("--out", type=Path, required=True, help="output folder (rerun with it to resume)")
    a("--components", type=int, nargs="*", default=[5, 10, 20], metavar="N",
      help="axis A: PCA components, one ControlNet each (no values: no layout axis; then give --controlnet)")  # fmt: skip
    a("--backbones", nargs="+", default=["sd-unet"], metavar="NAME",
      help="axis A: layout.backbone values, each at the largest N (the first, or sd-unet, carries the N axis)")  # fmt: skip
    a("--scales", type=float, nargs="*", default=[0.25, 0.5, 0.75, 1.0],
      help="axis B: controlnet_conditioning_scale values (no values: no sampling axis)")  # fmt: skip
    a("--guidance-ends", type=float, nargs="*", default=[0.4, 0.7, 1.0],
      help="axis B: control_guidance_end values (fraction of the steps the ControlNet acts in)")  # fmt: skip
    a(
        "--controlnet",
        type=Path,
        help="axis B on this trained ControlNet folder (default: the largest-N variant)",
    )
    a("--steps", type=int, default=150, help="ControlNet training steps, the same for every variant")
    a("--train-seed", type=int, default=0, help="ControlNet training seed, the same for every variant")
    a("--pca-samples", type=int, default=40000, help="feature vectors each backbone's PCA is fitted on")
    a("--base-model", default="models/procedural-base-v1", help="base model reference (folder, tiny, hub id)")
    a("--train-config", type=Path, default=Path("configs/train/procedural_controlnet_layout.yaml"),
      help="the trainer's YAML every variant starts from")  # fmt: skip
    a("--train-overrides", nargs="+", default=[], metavar="KEY=VALUE",
      help="more trainer overrides for every variant, e.g. batch_size=4 lr=1e-4")  # fmt: skip
    compare.add_eval_arguments(p, steps_flag="--sample-steps")
    return p


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    # compare's rows are the sweep's ControlNets (the sweep scores its points itself)
    folders = {v.name: variant_folder(args.out, v) for v in layout_variants(args.components, args.backbones)}
    if args.controlnet is not None:
        folders["controlnet"] = args.controlnet
    return SweepConfig(
        data=args.data, out=args.out, eval=compare.eval_config(args, folders, args.out),
        base_model=args.base_model, train_config=args.train_config, train_overrides=list(args.train_overrides),
        steps=args.steps, train_seed=args.train_seed, pca_samples=args.pca_samples,
        components=list(args.components), backbones=list(args.backbones), controlnet=args.controlnet,
        scales=list(args.scales), guidance_ends=list(args.guidance_ends), threads=args.threads,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    report = sweep(cfg)
    print((cfg.out / "sweep.md").read_text().split("## Recommendation")[-1].strip())
    print(f"written: {cfg.out / 'sweep.json'}, {cfg.out / 'sweep.md'}, {report['plot']}")
    return report


__all__ = ["Point", "SweepConfig", "Variant", "build_parser", "knee", "main", "pareto_front", "sweep"]


RESUME = "rerun the same command to resume: finished ControlNets and scored points are kept"

if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=RESUME))
