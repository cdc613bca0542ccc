"""Train SegFormer with mmsegmentation on real data, optionally mixed with our shards.

Usage (``make train-segformer`` wraps this)::

    python -m downstream.segformer.train [CONFIG] [--synth 'out/shards/*.tar' --ratio 0.5]
        [--work-dir DIR] [--max-iters N] [--seed S] [--resume] [--cfg-options key=value ...]

CONFIG defaults to the tiny procedural-city config (data under data/procedural from
``make city``). ``--synth`` mixes the given shards into the training set so that a fraction
``--ratio`` of the samples comes from them (MixedDataset + MixedSampler); the consumption hook
logs and saves what was actually drawn from each source. ``--resume`` continues from the latest
checkpoint in the work dir (a killed run, or a longer ``--max-iters``). Runs on a GPU when one is
visible (mmengine picks it), otherwise on the CPU.

``--cfg-options`` keys must exist in the config (mmengine would add a misspelt one silently and
the run would ignore it); ``downstream.segformer.cfg_options`` says which new keys are allowed.
Until training starts, mmengine's start-up report (environment, the whole config, the hooks)
and the warnings of building the model are held back (``HeldConsole``): if the start fails on
bad input the error is one line, and the report is in the work dir's log file.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import sys
from pathlib import Path
from typing import Any

from downstream.segformer.cfg_options import check_cfg_options
from factory.cli import run_cli
from factory.config import ConfigError, config_choices

DEFAULT_CONFIG = "configs/downstream/segformer_tiny_procedural-64x128.py"


def _datasets(cfg_node: Any, path: str):
    """Yield (config path, dataset dict) for a dataset config and the datasets nested in it."""
    if not isinstance(cfg_node, dict):
        return
    yield path, cfg_node
    for sub in ("real", "synth", "dataset"):
        if isinstance(cfg_node.get(sub), dict):
            yield from _datasets(cfg_node[sub], f"{path}.{sub}")
    for i, d in enumerate(cfg_node.get("datasets", []) or []):
        yield from _datasets(d, f"{path}.datasets[{i}]")


def check_config(cfg: Any, source: str = "<config>") -> None:
    """Fail early, naming the key, if a config uses a dataset/sampler/transform mmseg does not know."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATA_SAMPLERS, DATASETS, TRANSFORMS

    init_default_scope(cfg.get("default_scope", "mmseg"))
    for mod in (cfg.get("custom_imports") or {}).get("imports", []):
        importlib.import_module(mod)

    def known(registry: Any, name: str) -> bool:
        return registry.get(name) is not None

    def fail(where: str, kind: str, name: str, registry: Any) -> None:
        names = sorted(
            set(registry.module_dict) | set(registry.parent.module_dict if registry.parent else {})
        )
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {close}?" if close else f"known: {names[:12]}..."
        raise ConfigError(
            f"{source}: {where}.type = {name!r} is not a registered mmseg {kind} ({hint}); "
            "register it via custom_imports = dict(imports=['downstream.segformer.register']) or fix the name"
        )

    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        node = cfg.get(loader)
        if not node:
            continue
        for where, ds in _datasets(node.get("dataset"), f"{loader}.dataset"):
            if "type" in ds and isinstance(ds["type"], str) and not known(DATASETS, ds["type"]):
                fail(where, "dataset", ds["type"], DATASETS)
            for i, t in enumerate(ds.get("pipeline", []) or []):
                if (
                    isinstance(t, dict)
                    and isinstance(t.get("type"), str)
                    and not known(TRANSFORMS, t["type"])
                ):
                    fail(f"{where}.pipeline[{i}]", "transform", t["type"], TRANSFORMS)
        sampler = node.get("sampler") or {}
        if isinstance(sampler.get("type"), str) and not known(DATA_SAMPLERS, sampler["type"]):
            fail(f"{loader}.sampler", "sampler", sampler["type"], DATA_SAMPLERS)
        ds = node.get("dataset") or {}
        if ds.get("type") == "MixedDataset" and sampler.get("type") != "MixedSampler":
            raise ConfigError(
                f"{source}: {loader} uses MixedDataset with sampler {sampler.get('type')!r}; "
                "only MixedSampler honours its ratio (set sampler=dict(type='MixedSampler'))"
            )


def _set_max_iters(cfg: Any, max_iters: int) -> None:
    """Shorten/lengthen the schedule: loop length, validation, checkpoint and LR scheduler ends."""
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = min(cfg.train_cfg.get("val_interval", max_iters), max_iters)
    if "checkpoint" in cfg.default_hooks:
        cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, max_iters)
    for s in cfg.get("param_scheduler", []) or []:  # keep each phase's share of the schedule
        begin = min(max_iters - 1, round(s.get("begin", 0) * max_iters / old))
        s["begin"] = begin
        if s.get("end") is not None:
            s["end"] = max(begin + 1, min(max_iters, round(s["end"] * max_iters / old)))
    if "logger" in cfg.default_hooks:
        cfg.default_hooks.logger.interval = max(
            1, min(cfg.default_hooks.logger.interval, max_iters // 4 or 1)
        )


def with_classical_weather(pipeline: list[dict]) -> list[dict]:
    """``pipeline`` with ``ClassicalWeather`` right after the image is loaded (before the
    geometric and photometric transforms, as weather would be in the scene)."""
    steps = copy.deepcopy(list(pipeline))
    at = next((i for i, s in enumerate(steps) if s.get("type") == "LoadLumenImage"), None)
    if at is None:
        raise ConfigError("--augment classical: the train pipeline has no LoadLumenImage step to follow")
    steps.insert(at + 1, dict(type="ClassicalWeather"))
    return steps


def build_config(
    config: str | Path = DEFAULT_CONFIG,
    *,
    synth: str | list[str] | None = None,
    ratio: float = 0.5,
    augment: str | None = None,
    agreement_ignore: bool = False,
    work_dir: str | Path | None = None,
    max_iters: int | None = None,
    seed: int | None = None,
    cfg_options: dict[str, Any] | None = None,
    validate: bool = True,
) -> Any:
    """The mmengine Config for one run: file + mix + overrides, checked before anything is built."""
    from mmengine.config import Config

    config = Path(config)
    if not config.is_file():
        choices = config_choices(config, Path(DEFAULT_CONFIG).parent, suffixes=(".py",))
        raise ConfigError(f"config {config} does not exist{choices}")
    cfg = Config.fromfile(str(config))
    if cfg_options:
        check_cfg_options(cfg, cfg_options, str(config))
        cfg.merge_from_dict(cfg_options)
    if synth and augment:
        raise ConfigError(f"--synth and --augment {augment}: give one source of extra samples, not both")
    if augment is not None and augment != "classical":
        raise ConfigError(f"--augment {augment!r}: the one augmentation baseline is 'classical'")
    if synth or augment:
        if not 0.0 < ratio < 1.0:
            raise ConfigError(
                f"--ratio {ratio}: must be in (0, 1), the fraction of samples drawn from --synth / --augment"
            )
        real = copy.deepcopy(cfg.train_dataloader.dataset)
        extra: dict[str, Any]
        if synth:
            extra = dict(
                type="LumenShardDataset",
                shards=synth,
                pipeline=copy.deepcopy(real["pipeline"]),
                agreement_ignore=agreement_ignore,
            )
        else:  # the real set again, each draw through classical weather augmentation
            extra = copy.deepcopy(real)
            extra["pipeline"] = with_classical_weather(real["pipeline"])
        cfg.train_dataloader.dataset = dict(type="MixedDataset", real=real, synth=extra, ratio=ratio)
        cfg.train_dataloader.sampler = dict(type="MixedSampler", shuffle=True)
    if max_iters is not None:
        if max_iters < 1:
            raise ConfigError(f"--max-iters {max_iters}: must be >= 1")
        _set_max_iters(cfg, max_iters)
    if seed is not None:
        cfg.randomness = dict(seed=seed)
    if not validate:
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    suffix = "_synth" if synth else f"_{augment}" if augment else ""
    cfg.work_dir = str(work_dir or Path("outputs/segformer") / (config.stem + suffix))
    check_config(cfg, str(config))
    return cfg


def train(cfg: Any) -> Any:
    """Build the mmengine Runner from ``cfg``, train, and return the runner (model inside).

    With ``cfg.resume`` the latest checkpoint of ``cfg.work_dir`` is loaded first (model,
    optimizer, schedulers, iteration, message hub); training then runs to ``max_iters``.
    mmengine reads it (and ``load_from``, and pretrained weights) with the safe loader of
    downstream.checkpoints, so a planted pickle is refused, naming the file, before it runs.
    Until training starts the console is held (``downstream.segformer.console``): a start that
    fails on bad input ends with one error line, not after the Runner's start-up report.
    """
    from mmengine.runner import Runner

    from downstream.checkpoints import install_mmengine_loader
    from downstream.segformer.console import HeldConsole, ReleaseConsoleHook

    install_mmengine_loader()  # configs import downstream.segformer.register, which did it too
    with HeldConsole() as console:
        runner = Runner.from_cfg(cfg)
        runner.register_hook(ReleaseConsoleHook(console), priority="HIGHEST")
        runner.train()
    return runner


def main(argv: list[str] | None = None) -> Any:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(
        prog="python -m downstream.segformer.train", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "config", nargs="?", default=DEFAULT_CONFIG, help=f"mmseg config (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--synth", default=None, help="shard glob to mix into training, e.g. 'out/shards/*.tar'")
    p.add_argument(
        "--ratio", type=float, default=0.5, help="fraction of training samples from --synth (default 0.5)"
    )
    p.add_argument(
        "--augment",
        choices=["classical"],
        default=None,
        help="instead of --synth: a fraction --ratio of the draws are real images through classical "
        "weather augmentation (albumentations fog / rain / snow / darkening; the baseline)",
    )
    p.add_argument(
        "--agreement-ignore",
        action="store_true",
        help="ignore the --synth pixels where the factory's judge disagreed with the reused label "
        "(<key>.agree.png; shards generated with quality.segmenter)",
    )
    p.add_argument(
        "--work-dir", default=None, help="logs and checkpoints (default outputs/segformer/<config>[_synth])"
    )
    p.add_argument("--max-iters", type=int, default=None, help="override the schedule length")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-validate", action="store_true", help="skip the validation loop")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the work dir"
    )
    p.add_argument(
        "--no-acdc-eval", action="store_true", help="skip the final CS + ACDC per-weather evaluation"
    )
    p.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default=None, help="key=value overrides of the config"
    )
    a = p.parse_args(argv)
    cfg = build_config(
        a.config,
        synth=a.synth,
        ratio=a.ratio,
        augment=a.augment,
        agreement_ignore=a.agreement_ignore,
        work_dir=a.work_dir,
        max_iters=a.max_iters,
        seed=a.seed,
        cfg_options=a.cfg_options,
        validate=not a.no_validate,
    )
    cfg.resume = a.resume
    runner = train(cfg)
    if not a.no_acdc_eval:
        evaluate_domains(runner, cfg)
    return runner


def evaluate_domains(runner: Any, cfg: Any) -> dict[str, float] | None:
    """After training: mIoU on the CS test set and each ACDC weather, printed and saved.

    Skipped (with a log line) when the config's ACDC root does not exist.
    """
    import json

    from mmseg.registry import DATASETS

    from .evaluate import eval_dataset_cfgs

    acdc = cfg.get("acdc_val")
    if not acdc or not Path(acdc["data_root"]).is_dir():
        runner.logger.info(f"ACDC evaluation skipped: {acdc and acdc['data_root']} does not exist")
        return None
    from .evaluate import predict_and_score

    scores = {
        name: predict_and_score(runner.model, DATASETS.build(c), desc=name).miou()
        for name, c in eval_dataset_cfgs(cfg).items()
    }
    line = "  ".join(f"{k}: {v:.2f}" for k, v in scores.items())
    runner.logger.info(f"mIoU by domain: {line}")
    print(f"mIoU by domain: {line}")
    (Path(cfg.work_dir) / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


if __name__ == "__main__":
    sys.exit(
        run_cli(
            main,
            on_interrupt="rerun the same command with --resume to continue from the work dir's last checkpoint",
        )
    )
