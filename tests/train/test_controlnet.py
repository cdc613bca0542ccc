"""ControlNet training: stock diffusers loads what we save, kill-and-resume, bad-input errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from factory.config import from_dict
from factory.models import content_hash, load_components, new_controlnet, save_components
from factory.train.controlnet import (
    RESULT_FILE,
    ControlNetTrainConfig,
    TrainError,
    batch_indices,
    caption_for,
    latest_checkpoint,
    train_controlnet,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from helpers import LumaCondition  # noqa: E402


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """The tiny model saved as a diffusers StableDiffusionPipeline folder (a local model ref)."""
    folder = tmp_path_factory.mktemp("base") / "tiny-sd"
    save_components(load_components("tiny"), folder)
    return folder


def make_cfg(city_root: Path, base: Path, out: Path, **kw) -> ControlNetTrainConfig:
    raw = {
        "out": str(out),
        "base_model": str(base),
        "data": {"root": str(city_root / "cityscapes"), "limit": 4},
        "steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "threads": 2,
        "validation": {"every": -1, "steps": 2, "num_references": 1},
    }
    for k, v in kw.items():
        node = raw
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return from_dict(ControlNetTrainConfig, raw)


@pytest.fixture(scope="module")
def trained(city_root, base_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cn") / "run"
    cfg = make_cfg(city_root, base_folder, out, **{"validation.every": 2})
    return train_controlnet(cfg, provider=LumaCondition())


def test_stock_diffusers_pipeline_loads_and_runs(trained, base_folder):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    meta = json.loads((trained / RESULT_FILE).read_text())
    assert meta["steps"] == 4
    assert meta["condition"] == {"kind": "luma", "channels": 1, "signature": {"kind": "luma", "channels": 1}}
    assert meta["base_model"]["ref"] == str(base_folder)
    assert meta["base_model"]["content_hash"] == load_components(str(base_folder)).content_hash
    assert sorted(p.name for p in (trained / "validation").iterdir()) == [
        "step-0000002.png",
        "step-0000004.png",
    ]
    grid = cv2.imread(str(trained / "validation" / "step-0000004.png"))
    assert grid.shape[0] >= 64 and grid.shape[1] >= 4 * 128  # reference | condition | 2 prompts

    controlnet = ControlNetModel.from_pretrained(trained)
    assert controlnet.config.conditioning_channels == 1
    assert content_hash(controlnet) == meta["controlnet_content_hash"]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base_folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    cond = torch.rand(1, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    image = pipe(
        "a city street scene at night",
        image=cond,
        height=64,
        width=128,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 64, 128, 3) and np.isfinite(image).all()


def test_kill_and_resume_ends_at_same_step_and_weights(city_root, base_folder, tmp_path, trained):
    out = tmp_path / "run"
    cfg = make_cfg(city_root, base_folder, out)
    cfg_path = tmp_path / "cfg.yaml"
    raw = {**json.loads(json.dumps(cfg.__dict__, default=str))}
    raw.update(data={"root": str(cfg.data.root), "limit": 4}, caption={}, validation={"every": -1})
    raw.pop("condition")
    cfg_path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, str(HERE / "helpers.py"), str(cfg_path)]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "TQDM_DISABLE": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while latest_checkpoint(out / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = latest_checkpoint(out / "checkpoints")
    assert first is not None and first[0] < 4, "killed run should have left an early checkpoint"
    assert not (out / RESULT_FILE).exists()
    # debris of a crash mid-save must be ignored: a temp dir and a dir without its state file
    (out / "checkpoints" / ".tmp-checkpoint-0000003").mkdir()
    (out / "checkpoints" / "checkpoint-0000003").mkdir()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {first[1]}" in done.stdout
    meta = json.loads((out / RESULT_FILE).read_text())
    assert meta["steps"] == 4
    assert meta["timings"]["steps_run_this_call"] == 4 - first[0]
    # same batches, noise and optimiser state as the uninterrupted run -> same weights
    reference = json.loads((trained / RESULT_FILE).read_text())["controlnet_content_hash"]
    assert meta["controlnet_content_hash"] == reference

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert json.loads((out / RESULT_FILE).read_text())["timings"]["steps_run_this_call"] == 0


def test_latest_checkpoint_skips_incomplete(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [
        ("checkpoint-0000002", True),
        ("checkpoint-0000004", False),
        (".tmp-checkpoint-0000006", True),
    ]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(root) == (2, root / "checkpoint-0000002")
    assert latest_checkpoint(tmp_path / "none") is None


def test_batch_indices_cover_each_epoch_and_split_processes():
    n = 5
    epoch = [i for step in range(5) for i in batch_indices(n, 1, step, 0, 1, seed=3)]
    assert sorted(epoch) == list(range(n))
    two = [batch_indices(8, 2, 0, p, 2, seed=0) for p in (0, 1)]
    assert sorted(two[0] + two[1]) == sorted(batch_indices(8, 4, 0, 0, 1, seed=0))


def test_captions_template_and_files(tmp_path):
    from factory.data.sample import SampleRef
    from factory.train.controlnet import CaptionConfig

    img = tmp_path / "aachen_000000_000019_leftImg8bit.png"
    ref = SampleRef("aachen_000000_000019", {"image": img}, {"weather": "fog", "city": "aachen"})
    assert caption_for(ref, CaptionConfig(template="{city} street, {weather}")) == "aachen street, fog"
    # {condition}: the field's old name, still accepted as an alias of {weather}
    assert caption_for(ref, CaptionConfig(template="{city} street, {condition}")) == "aachen street, fog"
    img.with_suffix(".txt").write_text("a rainy boulevard\n")
    assert caption_for(ref, CaptionConfig()) == "a rainy boulevard"
    assert caption_for(ref, CaptionConfig(files=False, template="x")) == "x"
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "aachen_000000_000019.txt").write_text("from dir")
    assert caption_for(ref, CaptionConfig(dir=tmp_path / "caps")) == "from dir"
    with pytest.raises(TrainError, match="unknown field"):
        caption_for(ref, CaptionConfig(files=False, template="{season}"))


# --------------------------------------------------------------------------- bad input, before any step


def _assert_no_step(out: Path) -> None:
    assert not (out / "checkpoints").exists() and not (out / "train_log.jsonl").exists()


def test_error_channel_mismatch(city_root, base_folder, tmp_path):
    init = tmp_path / "cn3"
    new_controlnet(load_components(str(base_folder)), 3).save_pretrained(init)
    cfg = make_cfg(city_root, base_folder, tmp_path / "out", controlnet_init=str(init))
    with pytest.raises(TrainError, match=r"1 channels but the ControlNet .* conditioning_channels=3"):
        train_controlnet(cfg, provider=LumaCondition())
    _assert_no_step(tmp_path / "out")


def test_error_mixed_sizes(city_root, base_folder, tmp_path):
    root = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", root)
    first = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[0]
    cv2.imwrite(str(first), cv2.resize(cv2.imread(str(first)), (64, 32)))
    cfg = make_cfg(city_root, base_folder, tmp_path / "out", **{"data.root": str(root)})
    with pytest.raises(TrainError, match=r"mixed sizes: .* is 32x64 but .* is 64x128.*resolution"):
        train_controlnet(cfg, provider=LumaCondition())
    _assert_no_step(tmp_path / "out")


def test_error_unresolvable_base_model(city_root, tmp_path):
    cfg = make_cfg(city_root, tmp_path / "no-such-model", tmp_path / "out")
    with pytest.raises(TrainError, match=r"base_model .*no-such-model.* does not resolve"):
        train_controlnet(cfg, provider=LumaCondition())
    _assert_no_step(tmp_path / "out")


def test_error_empty_dataset(base_folder, tmp_path):
    root = tmp_path / "empty"
    (root / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    cfg = make_cfg(tmp_path, base_folder, tmp_path / "out", **{"data.root": str(root)})
    with pytest.raises(TrainError, match=r"empty or unreadable dataset .*no \*_leftImg8bit.png images"):
        train_controlnet(cfg, provider=LumaCondition())
    _assert_no_step(tmp_path / "out")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_follows_the_base_prediction_type(prediction_type):
    """A v-prediction base model (factory.train.base prediction_type) is steered with its own objective."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from factory.models import SD_SCHEDULE
    from factory.train.controlnet import _Data, _loss

    sched = DDPMScheduler(**{**SD_SCHEDULE, "prediction_type": prediction_type})
    zeros = torch.zeros(4, 4, 8, 16)  # z0 = 0, so z_t is the scaled noise alone
    data = _Data(zeros, zeros, torch.zeros(4, 1, 32, 64), (32, 64), False, torch.zeros(4, dtype=torch.long),
                 torch.zeros(1, 3, 8), torch.zeros(3, 8), [], None)  # fmt: skip
    seen = {}

    def unet(zt, t, **kw):
        seen.update(zt=zt, t=t)
        return SimpleNamespace(sample=torch.zeros_like(zt))

    cfg = SimpleNamespace(batch_size=2, seed=0, condition_dropout=0.0, caption=SimpleNamespace(dropout=0.0))
    acc = SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1)
    controlnet = lambda *a, **k: ([], torch.zeros(1))  # noqa: E731
    loss = _loss(cfg, data, [0, 1], 0, acc, controlnet, SimpleNamespace(unet=unet), sched, 1.0, torch.float32)
    ab = sched.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    noise = seen["zt"] / (1 - ab).sqrt()
    target = noise if prediction_type == "epsilon" else ab.sqrt() * noise  # v = sqrt(ab) eps - sqrt(1-ab) z0
    assert float(loss) == pytest.approx(float((target**2).mean()), rel=1e-4)
