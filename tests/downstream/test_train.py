"""A very short tiny training run: a checkpoint, a finite mIoU, and the consumed-samples log;
checkpoints are read without running pickled code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "downstream" / "segformer_tiny_procedural-64x128.py"
)


def test_short_mixed_training_run(city_env, ref_shards, tmp_path):
    from downstream.segformer.train import build_config, train

    cfg = build_config(
        CONFIG,
        synth=str(ref_shards[0].parent / "*.tar"),
        ratio=0.5,
        work_dir=tmp_path,
        max_iters=4,
        seed=0,
        cfg_options={
            "train_dataloader.num_workers": 0,
            "train_dataloader.persistent_workers": False,
            "train_dataloader.batch_size": 2,
        },
    )
    runner = train(cfg)
    assert (tmp_path / "iter_4.pth").is_file()
    metrics = runner.val_loop.run()  # runs again on the final weights: same numbers as the loop's
    assert math.isfinite(metrics["mIoU"]) and 0.0 <= metrics["mIoU"] <= 100.0
    consumed = json.loads((tmp_path / "consumed_sources.json").read_text())
    assert consumed["counts"] == {"real": 4, "synth": 4}
    assert consumed["unused_sources"] == []
    # the saved checkpoint reloads (torch>=2.6 weights_only trap) and scores the same on CS val
    from downstream.segformer.evaluate import evaluate_checkpoint

    scores = evaluate_checkpoint(CONFIG, tmp_path / "iter_4.pth", device="cpu")
    assert set(scores) == {"CS", "fog", "night", "rain", "snow"}
    assert abs(scores["CS"] - metrics["mIoU"]) <= 0.006  # mmseg rounds to 2 decimals


def test_resume_continues_from_the_latest_checkpoint(city_env, tmp_path):
    """--resume under torch >= 2.6 (weights_only loading): picks up at iter 4, ends at 6."""
    from downstream.segformer.train import build_config, main, train

    options = {
        "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.batch_size": 2,
    }
    train(build_config(CONFIG, work_dir=tmp_path, max_iters=4, seed=0, validate=False, cfg_options=options))
    args = [str(CONFIG), "--work-dir", str(tmp_path), "--max-iters", "6", "--seed", "0", "--no-validate"]
    args += ["--resume", "--no-acdc-eval", "--cfg-options"] + [f"{k}={v}" for k, v in options.items()]
    runner = main(args)
    assert runner.iter == 6 and (tmp_path / "iter_6.pth").is_file()
    # only the 2 missing iterations ran (batch 2): not retrained from scratch; the audit covers
    # the whole run (4 + 2 iterations), carried in the checkpoint across the resume
    consumed = json.loads((tmp_path / "consumed_sources.json").read_text())
    assert consumed["counts_this_call"] == {"real": 4}, consumed
    assert consumed["counts"] == {"real": 12} and consumed["total"] == 12, consumed
    logs = "".join(p.read_text() for p in tmp_path.glob("*/*.log"))
    assert "resumed" in logs.lower() and "iter_4.pth" in logs


def test_evaluate_refuses_a_checkpoint_whose_pickle_runs_code(city_env, planted_checkpoint, monkeypatch):
    """``python -m downstream.segformer.evaluate`` on a planted file: refused by name, nothing
    runs - even with torch's opt-out of safe loading set in the environment."""
    from downstream.checkpoints import CheckpointError
    from downstream.segformer.evaluate import main

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    bad, marker = planted_checkpoint
    with pytest.raises(CheckpointError, match="refused to load this checkpoint.*exec") as err:
        main([str(CONFIG), str(bad)])
    assert err.value.path == bad and str(bad) in str(err.value)
    assert not marker.exists()


def test_resume_refuses_a_planted_checkpoint(city_env, planted_checkpoint, tmp_path, monkeypatch):
    """--resume reads the work dir's latest checkpoint through the same safe loader."""
    from downstream.checkpoints import CheckpointError
    from downstream.segformer.train import build_config, train

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    bad, marker = planted_checkpoint  # tmp_path / "iter_4.pth"
    (tmp_path / "last_checkpoint").write_text(str(bad))
    options = {"train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False}
    cfg = build_config(CONFIG, work_dir=tmp_path, max_iters=6, seed=0, validate=False, cfg_options=options)
    cfg.resume = True
    with pytest.raises(CheckpointError, match="refused") as err:
        train(cfg)
    assert err.value.path == bad
    assert not marker.exists()


def test_training_skips_and_records_a_sample_with_bad_label_ids(city_env, bad_label_shard, tmp_path):
    """A synthetic sample whose labelIds hold 250 stopped training when drawn. Now the run ends
    at max_iters and ``bad_samples.jsonl`` names it (drawn in a loader worker, recorded in the
    main process)."""
    from downstream.segformer.train import build_config, train

    shard, _, bad = bad_label_shard
    options = {
        "train_dataloader.num_workers": 1,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.batch_size": 2,
    }
    work = tmp_path / "run"
    cfg = build_config(
        CONFIG,
        synth=str(shard),
        ratio=0.5,
        work_dir=work,
        max_iters=2,
        seed=0,
        validate=False,
        cfg_options=options,
    )
    runner = train(cfg)  # 2 of the 4 draws are synthetic: each of the 2 samples once
    assert runner.iter == 2 and (work / "iter_2.pth").is_file()
    lines = [json.loads(x) for x in (work / "bad_samples.jsonl").read_text().splitlines()]
    assert len(lines) >= 1 and {x["key"] for x in lines} == {bad}
    assert all(x["iter"] in (0, 1) and x["source"] == "synth" for x in lines)
    assert "holds values [250] above 33" in lines[0]["reason"]
    consumed = json.loads((work / "consumed_sources.json").read_text())
    assert consumed["counts"] == {"real": 2, "synth": 2}  # the replacement keeps the ratio


def test_a_resumed_run_lists_each_skipped_sample_once(tmp_path):
    """bad_samples.jsonl keeps the iterations before the resumed checkpoint, drops those redone."""
    from types import SimpleNamespace

    from downstream.segformer.hooks import SkippedSampleHook

    log = tmp_path / "bad_samples.jsonl"
    log.write_text("".join(json.dumps({"iter": i, "key": f"k{i}"}) + "\n" for i in range(6)))
    hook = SkippedSampleHook()
    hook.before_train(SimpleNamespace(work_dir=str(tmp_path), iter=4))
    assert [json.loads(x)["iter"] for x in log.read_text().splitlines()] == [0, 1, 2, 3]
    runner = SimpleNamespace(iter=4, logger=SimpleNamespace(warning=lambda msg: None))
    batch = {"data_samples": [{"skipped_samples": [{"key": "k4", "reason": "bad"}]}, {}]}
    hook.after_train_iter(runner, 4, batch)
    assert [json.loads(x)["key"] for x in log.read_text().splitlines()] == ["k0", "k1", "k2", "k3", "k4"]
    hook.before_train(SimpleNamespace(work_dir=str(tmp_path), iter=0))  # a new run starts afresh
    assert log.read_text() == ""
