"""The command-line tools as a newcomer meets them (factory.cli): bad input is one ``error:`` line
with its fix and exit code 2, no traceback; Ctrl-C exits with 130 and says how to resume, and
resuming ends byte-identical; ``--help`` lists the config's fields; SegFormer refuses unknown
``--cfg-options`` keys. Each behaviour is checked on the real command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.cli import EXPECTED_ERRORS, config_fields, config_help, run_cli
from factory.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "jobs"))
from jobcfg import make_cfg, overrides, shard_bytes  # noqa: E402

SEGFORMER_CONFIG = REPO / "configs" / "downstream" / "segformer_tiny_procedural-64x128.py"


def cli(
    *args: str, cwd: Path = REPO, debug: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m <args>`` as a user runs it (LUMEN_DEBUG off unless ``debug``)."""
    # a user's shell: no debug switch, no dataset roots another test may have pointed elsewhere
    env = {k: v for k, v in os.environ.items() if k not in ("LUMEN_DEBUG", "CITY_ROOT")}
    env.update(PYTHONPATH=str(REPO), TQDM_DISABLE="1", **({"LUMEN_DEBUG": "1"} if debug else {}))
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def the_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a run that failed on bad input (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------ errors, in a process
def test_a_config_typo_is_one_error_line_naming_the_closest_key():
    line = the_error_line(cli("factory.train.base", "unet_stepz=10"))
    assert "unknown key unet_stepz" in line and "did you mean unet_steps?" in line


def test_lumen_debug_shows_the_traceback_of_an_expected_error():
    proc = cli("factory.train.base", "unet_stepz=10", debug=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: unknown key unet_stepz")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # a typo in the name: the closest file first, then the folder's configs
        ("configs/train/procedural_bse.yaml", ["did you mean configs/train/procedural_base.yaml?"]),
        # a folder that does not exist: the configs of the tool's own folder
        ("nowhere/procedural_base.yaml", ["configs in configs/train/", "procedural_foundation.yaml"]),
    ],
)
def test_a_wrong_config_path_lists_the_configs_that_exist(config, expected):
    line = the_error_line(cli("factory.train.base", "--config", config))
    assert f"config file {config} does not exist" in line
    assert all(e in line for e in expected), line
    assert "procedural_controlnet_layout.yaml" in line


def test_a_missing_procedural_dataset_says_make_city(tmp_path):
    """The ControlNet trainer, run as ``__main__``, raises its own TrainError (defined in the
    module it was run as): still one line, and the dataset's fix reaches the user."""
    missing = tmp_path / "data" / "procedural" / "cityscapes"
    line = the_error_line(cli("factory.train.controlnet", f"data.root={missing}"))
    assert f"{missing}: Cityscapes root does not exist" in line and "run `make city`" in line


def test_help_lists_nested_config_fields_with_types_defaults_and_docs():
    proc = cli("factory.jobs.generate", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in [
        "  out: Path | str (required)",  # a local folder or an fsspec URI
        "  synth.steps: int = 20",
        "  dataset.root: Path | str = data/procedural/cityscapes",  # or an fsspec URI
        "  dataset.cache: Path = /tmp/lumen-dataset-cache",
        "  variants.sets: list[str] = [fog, rain, snow, night]",
        "  synth.condition.layout.model: str = tiny",  # nested two levels below an optional config
        "  executor: {actor_pool, ray_data, in_process} = actor_pool",
        "  faults.delay_s: float = 0.0",
    ]:
        assert line in text, line
    assert "sleep per synthesizer call" in text  # a docstring entry (FaultsConfig)
    assert "threads per worker that decode" in text  # a comment above the field (load_threads)


# ---------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_exits_130_with_a_resume_hint_and_the_rerun_ends_byte_identical(city_root, tmp_path):
    from factory.jobs.generate import run
    from factory.shards import Manifest

    baseline = tmp_path / "baseline"
    run(make_cfg(city_root, baseline, "executor=in_process"))
    out = tmp_path / "out"
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text("{}\n")
    args = ["factory.jobs.generate", "--config", str(cfg_path)]
    args += overrides(city_root, out, "executor=in_process", "faults.delay_s=1.5")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT's default action in the child, whatever this process inherited (a shell's background
    # job ignores SIGINT, and Python keeps an ignored SIGINT ignored)
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    manifest = Manifest(out / "manifest")
    deadline = time.time() + 180
    while time.time() < deadline and not manifest.done_shards() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted: rerun the same command to resume" in stderr
    assert 1 <= len(manifest.done_shards()) < 3, "interrupted mid-job"

    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] >= 1  # resumed, not redone
    assert shard_bytes(out) == shard_bytes(baseline)


# ---------------------------------------------------------------------------------- SegFormer
def test_segformer_refuses_an_unknown_cfg_option_naming_it():
    pytest.importorskip("mmseg")
    proc = cli("downstream.segformer.train", str(SEGFORMER_CONFIG), "--cfg-options", "train_cfg.max_iter=3")
    line = the_error_line(proc)
    assert "unknown key train_cfg.max_iter" in line and "did you mean train_cfg.max_iters?" in line
    line = the_error_line(
        cli("downstream.segformer.train", str(SEGFORMER_CONFIG), "--cfg-options", "foo.bar=1")
    )
    assert "unknown key foo.bar" in line


def test_segformer_without_its_dataset_fails_in_one_line_without_the_config_dump(tmp_path):
    """No data/procedural under the working folder: the first run of a newcomer who skipped
    ``make city``. mmengine's start-up report (~500 lines) stays in the work dir's log file."""
    pytest.importorskip("mmseg")
    work = tmp_path / "work"
    args = [str(SEGFORMER_CONFIG), "--no-acdc-eval", "--max-iters", "1", "--work-dir", str(work)]
    proc = cli("downstream.segformer.train", *args, cwd=tmp_path)
    line = the_error_line(proc)
    assert "data/procedural/cityscapes: Cityscapes root does not exist" in line and "make city" in line
    assert proc.stderr.strip().splitlines() == [line]  # nor the model build's warnings
    assert "Config:" not in proc.stdout and len(proc.stdout.splitlines()) < 5, proc.stdout[:2000]
    assert any("Config:" in p.read_text() for p in work.glob("*/*.log"))


# ---------------------------------------------------------------------------------- in-process
def test_every_expected_error_name_is_an_exception_class():
    import importlib

    for name in EXPECTED_ERRORS:
        module, _, cls = name.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), cls), Exception), name
    from downstream.checkpoints import CheckpointError
    from factory.data.sample import DataError

    assert issubclass(CheckpointError, DataError)  # covered without factory importing downstream


def test_run_cli_reports_expected_errors_and_lets_bugs_raise(capsys):
    def bad_input() -> int:
        raise ConfigError("steps: must be >= 1 (fix: give a positive count)")

    def bug() -> int:
        raise RuntimeError("a bug")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run_cli(bad_input, on_interrupt="-") == 2
    assert capsys.readouterr().err == "error: steps: must be >= 1 (fix: give a positive count)\n"
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(bug, on_interrupt="-")
    assert run_cli(interrupted, on_interrupt="rerun it") == 130
    assert capsys.readouterr().err.strip() == "interrupted: rerun it"
    assert run_cli(lambda: {"summary": 1}, on_interrupt="-") == 0


def _config_classes():
    from downstream.multitask.train import MultitaskConfig
    from factory.jobs.extract_layouts import ExtractConfig
    from factory.jobs.generate import GenerateConfig
    from factory.train.base import BaseTrainConfig
    from factory.train.controlnet import ControlNetTrainConfig

    return [GenerateConfig, ExtractConfig, BaseTrainConfig, ControlNetTrainConfig, MultitaskConfig]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_config_help_has_a_line_for_every_field(cls):
    import dataclasses

    text = config_help(cls)
    keys = [f.key for f in config_fields(cls)]
    assert len(keys) == len(set(keys))
    for f in dataclasses.fields(cls):
        assert f"\n  {f.name}: " in text, f.name
    for key in keys:
        assert f"\n  {key}: " in text, key


def test_config_help_says_when_a_required_field_applies():
    from downstream.multitask.train import MultitaskConfig

    text = config_help(MultitaskConfig)
    assert "\n  real: SourceConfig | None = null\n" in text
    assert "\n  real.root: str (required when real is set)\n" in text
    assert "\n  model.embed_dims: int = 32\n" in text
