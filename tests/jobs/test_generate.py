"""The generation job on the procedural city: shards, labels, resume and faults.

These tests are about the infrastructure (Ray actors, shards, manifest, resume), so most use a
trivial deterministic synthesizer (tests/jobs/doubles.py); test_real_synthesizer runs the real
factory.synth Synthesizer with tiny models through the same job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from factory.config import ConfigError
from factory.data.sample import check_key
from factory.jobs.generate import run
from factory.shards import Manifest, read_shard_samples

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from jobcfg import DOUBLE, PROMPTS, REPO, kill_driver_after_first_shard, make_cfg, overrides, shard_bytes  # noqa: E402,F401


@pytest.fixture(scope="module")
def baseline(city_root, ray_local, tmp_path_factory):
    """One uninterrupted run: the reference every fault test compares against."""
    out = tmp_path_factory.mktemp("baseline")
    summary = run(make_cfg(city_root, out))
    return out, summary


def test_job_writes_readable_shards_with_reference_labels(baseline, city_root):
    out, summary = baseline
    assert summary.shards_total == 3 and summary.shards_skipped == 0
    assert summary.counts == {"ok": 6}
    samples = list(read_shard_samples(sorted((out / "shards").glob("*.tar"))))  # stock WebDataset
    keys = [s["__key__"] for s in samples]
    assert len(keys) == 6 and len(set(keys)) == 6
    for s in samples:
        check_key(s["__key__"])
        meta = json.loads(s["json"])
        assert s["__key__"] == f"{meta['source_key']}__{meta['variant']}"
        img_path = next((city_root / "cityscapes" / "leftImg8bit" / "train").rglob(f"{meta['source_key']}_*"))
        stem = img_path.name.removesuffix("_leftImg8bit.png")
        gt = img_path.parent.parent.parent.parent / "gtFine" / "train" / img_path.parent.name
        assert s["labelids.png"] == (gt / f"{stem}_gtFine_labelIds.png").read_bytes()
        assert s["instanceids.png"] == (gt / f"{stem}_gtFine_instanceIds.png").read_bytes()
        assert "disparity.png" in s and "png" in s
        assert meta["image_size"] == meta["label_size"] == [64, 128]
    rows = Manifest(out / "manifest").rows()
    assert Counter(r["status"] for r in rows) == {"ok": 6}
    assert all(r["checksums"]["labelids.png"] for r in rows)
    card = json.loads((out / "card.json").read_text())
    assert card["per_variant"] == {"fog": {"ok": 3}, "night": {"ok": 3}}
    assert card["samples"]["accepted"] == 6
    assert (out / "card.md").read_text().startswith("# Synthetic dataset card")
    assert (out / "contact_sheet.png").stat().st_size > 0


def test_rerun_skips_finished_shards(baseline, city_root):
    out, _ = baseline
    before = shard_bytes(out)
    accounting = json.loads((out / "card.json").read_text())["accounting"]
    summary = run(make_cfg(city_root, out))
    assert summary.shards_skipped == 3 and summary.shards_done == []
    assert shard_bytes(out) == before
    # nothing ran, so the card keeps the first run's compute accounting (it once fell back to CPU)
    assert summary.card["accounting"] == accounting and accounting["kind"] == "cpu"
    assert "cpu_seconds_per_accepted_sample" in summary.card


def test_contact_sheet_reads_only_the_shards_it_shows(city_root, tmp_path, monkeypatch):
    from factory.data import members

    read: list[str] = []
    real = members.read_shard_samples

    def counting(paths, **kwargs):
        read.extend(Path(p).name for p in paths)
        return real(paths, **kwargs)

    monkeypatch.setattr(members, "read_shard_samples", counting)
    out = tmp_path / "out"
    run(make_cfg(city_root, out, "executor=in_process", "contact_sheet_refs=1"))
    assert read == ["shard-000000.tar"]  # the first reference's two variants, not all 3 shards
    assert (out / "contact_sheet.png").stat().st_size > 0


def test_label_size_of_a_shard_reference_generated_smaller_than_its_labels(city_root, tmp_path):
    """A second job on the first job's shards records the labels' size, not the image's."""
    real = ["synthesizer=lumen", "synth.base_model=tiny", "synth.steps=1", "synth.device=cpu",
            "synth.scheduler=ddim", "synth.condition.kind=canny", "synth.condition.device=cpu",
            "quality.min_std=0", "executor=in_process"]  # fmt: skip
    first = tmp_path / "first"
    run(
        make_cfg(city_root, first, *real, "synth.height=32", "synth.width=64", "variants.sets=[fog]", limit=1)
    )
    meta = json.loads(next(read_shard_samples(sorted((first / "shards").glob("*.tar"))))["json"])
    assert meta["image_size"] == [32, 64] and meta["label_size"] == [64, 128]
    second = tmp_path / "second"
    cfg = make_cfg(
        city_root, second, *real, "variants.sets=[night]", "synth.height=32", "synth.width=64", limit=1
    )
    cfg = dataclasses.replace(
        cfg, dataset=dataclasses.replace(cfg.dataset, kind="shards", root=first / "shards")
    )
    assert run(cfg).counts == {"ok": 1}
    meta = json.loads(next(read_shard_samples(sorted((second / "shards").glob("*.tar"))))["json"])
    assert meta["label_size"] == [64, 128], "the reference's labels are 64x128 although its image is 32x64"


def test_killed_actor_is_replaced_and_work_reassigned(baseline, city_root, tmp_path):
    out = tmp_path / "out"
    summary = run(make_cfg(city_root, out, "faults.kill_after_items=2"))
    assert (out / ".fault-killed").exists()
    assert summary.actors_died == 1 and summary.reassigned
    accepted = Counter(r["key"] for r in Manifest(out / "manifest").rows() if r["status"] == "ok")
    assert len(accepted) == 6 and set(accepted.values()) == {1}
    assert shard_bytes(out) == shard_bytes(baseline[0])


def test_out_of_memory_halves_batch_with_identical_outputs(city_root, ray_local, tmp_path):
    one = run(make_cfg(city_root, tmp_path / "b1", "batch_size=1", "samples_per_shard=6", "ray.num_actors=1"))
    oom = run(
        make_cfg(
            city_root,
            tmp_path / "b4",
            "batch_size=4",
            "samples_per_shard=6",
            "ray.num_actors=1",
            "faults.oom_above_batch=2",
        )
    )
    assert one.counts == oom.counts == {"ok": 6}
    assert shard_bytes(tmp_path / "b1") == shard_bytes(tmp_path / "b4")


def test_bad_samples_are_recorded_and_the_rest_completes(city_root, ray_local, tmp_path):
    city = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", city / "cityscapes")
    images = sorted((city / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[:3]
    keys = [p.name.removesuffix("_leftImg8bit.png") for p in images]
    images[0].write_bytes(b"this is not a png")
    gt = city / "cityscapes" / "gtFine" / "train" / images[1].parent.name
    (gt / f"{keys[1]}_gtFine_labelIds.png").unlink()
    out = tmp_path / "out"
    summary = run(make_cfg(city, out, f"faults.nan_keys=[{keys[2]}__fog]"))
    final = {}
    for r in Manifest(out / "manifest").rows():
        final[r["key"]] = r  # attempts are in order within a shard
    assert final[f"{keys[0]}__fog"]["status"] == "failed"
    assert final[f"{keys[1]}__night"]["status"] == "failed"
    assert "labelIds" in final[f"{keys[1]}__night"]["reason"]
    assert final[f"{keys[2]}__fog"]["status"] == "rejected"
    assert "nonfinite" in final[f"{keys[2]}__fog"]["reason"]
    assert final[f"{keys[2]}__night"]["status"] == "ok"
    assert summary.counts == {"failed": 4, "rejected": 1, "ok": 1}
    assert [s["__key__"] for s in read_shard_samples(sorted((out / "shards").glob("*.tar")))] == [
        f"{keys[2]}__night"
    ]
    card = json.loads((out / "card.json").read_text())
    assert any("nonfinite" in r for r in card["not_accepted_reasons"])


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["synth.stepz=3"], "stepz"),
        (["batch_size=two"], "batch_size"),
        (["samples_per_shard=0"], "samples_per_shard"),
        (["synth.guidance_scale=-1"], "guidance_scale"),
        (["shards.image_format=gif"], "image_format"),
        (["ray.in_flight_per_actor=0"], "in_flight_per_actor"),
        (["quality.max_attempts=0"], "quality.max_attempts"),
        (["quality.min_std=-1"], "quality.min_std"),
        (["max_attempts=2"], "unknown key max_attempts"),
    ],
)
def test_config_errors_name_the_field_before_any_work(city_root, tmp_path, extra, field):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=field):
        make_cfg(city_root, out, *extra)
    assert not out.exists()


def test_resume_refuses_a_different_plan(baseline, city_root):
    with pytest.raises(RuntimeError, match="planned with different settings"):
        run(make_cfg(city_root, baseline[0], "seed=1"))


@pytest.mark.slow
def test_killed_driver_rerun_redoes_only_unfinished_shards(baseline, city_root, tmp_path):
    out = tmp_path / "out"
    finished = kill_driver_after_first_shard(city_root, out, tmp_path)
    manifest = Manifest(out / "manifest")
    first_run = {r["key"]: r["run_id"] for r in manifest.rows()}

    summary = run(make_cfg(city_root, out))
    assert set(summary.shards_done) == {"shard-000000", "shard-000001", "shard-000002"} - finished
    rows = manifest.rows()
    assert all(r["run_id"] == first_run[r["key"]] for r in rows if r["shard"] in finished)
    accepted = Counter(r["key"] for r in rows if r["status"] == "ok")
    assert len(accepted) == 6 and set(accepted.values()) == {1}
    assert shard_bytes(out) == shard_bytes(baseline[0])


def test_real_synthesizer_tiny_models_through_the_job(city_root, ray_local, tmp_path):
    """The LUMEN Synthesizer (tiny models, Canny condition, 2 steps) end to end; with OOM at
    batch > 2 the shards equal a batch-1 run's (per-sample generators)."""
    real = ["synthesizer=lumen", "synth.base_model=tiny", "synth.steps=2", "synth.device=cpu",
            "synth.scheduler=ddim", "synth.condition.kind=canny", "synth.condition.device=cpu", "quality.min_std=0",
            "ray.num_actors=1", "samples_per_shard=4"]  # fmt: skip
    one = run(make_cfg(city_root, tmp_path / "b1", *real, "batch_size=1", limit=2))
    oom = run(
        make_cfg(city_root, tmp_path / "b4", *real, "batch_size=4", "faults.oom_above_batch=2", limit=2)
    )
    assert one.counts == oom.counts == {"ok": 4}
    assert shard_bytes(tmp_path / "b1") == shard_bytes(tmp_path / "b4")
    sample = next(read_shard_samples(sorted((tmp_path / "b1" / "shards").glob("*.tar"))))
    meta = json.loads(sample["json"])
    assert meta["models"]["base_model"]["ref"] == "tiny" and meta["models"]["sampler"]["steps"] == 2


def test_synth_dtype_reaches_the_models_inside_the_job(city_root, tmp_path, monkeypatch):
    """``synth.dtype`` is the precision the job's models run in (it was once dropped on the way)."""
    from factory.jobs.generate import stage as stage_module

    seen: list[str] = []
    real_build = stage_module.GenerateStage.setup

    def spy(self):
        real_build(self)
        seen.extend(str(p.dtype) for p in (next(self.synth.components.unet.parameters()),
                                           next(self.synth.controlnet.parameters())))  # fmt: skip

    monkeypatch.setattr(stage_module.GenerateStage, "setup", spy)
    real = ["synthesizer=lumen", "synth.base_model=tiny", "synth.steps=1", "synth.device=cpu",
            "synth.scheduler=ddim", "synth.condition.kind=canny", "synth.condition.device=cpu",
            "quality.min_std=0", "executor=in_process", "synth.dtype=bfloat16"]  # fmt: skip
    out = tmp_path / "bf16"
    assert run(make_cfg(city_root, out, *real, limit=1)).counts == {"ok": 2}
    assert seen == ["torch.bfloat16", "torch.bfloat16"]
    meta = json.loads(next(read_shard_samples(sorted((out / "shards").glob("*.tar"))))["json"])
    assert meta["models"]["dtype"] == "bfloat16"


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory) -> Path:
    """A barely trained segmenter (seconds): enough to give a real, reproducible score."""
    from factory.quality.segmenter import Segmenter, SegmenterConfig

    path = tmp_path_factory.mktemp("segmenter") / "seg"
    cfg = SegmenterConfig(n_scenes=4, steps=3, batch_size=2, width_mult=4, augment=False)
    Segmenter.train_procedural(cfg).save(path)
    return path


def test_label_consistency_is_scored_against_the_reused_labels_and_gates(
    city_root, ray_local, tmp_path, tiny_segmenter
):
    import cv2
    import numpy as np

    from factory.quality import judge, label_consistency
    from factory.quality.segmenter import Segmenter

    seg = ["ray.num_actors=1", f"quality.segmenter={tiny_segmenter}"]
    scored = run(make_cfg(city_root, tmp_path / "scored", *seg, limit=1))
    assert scored.counts == {"ok": 2}
    segmenter = Segmenter.load(tiny_segmenter)
    for s in read_shard_samples(sorted((tmp_path / "scored" / "shards").glob("*.tar"))):
        meta = json.loads(s["json"])
        image = cv2.imdecode(np.frombuffer(s["png"], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        labels = cv2.imdecode(np.frombuffer(s["labelids.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        expected = label_consistency(np.ascontiguousarray(image), labels, segmenter, labelids=True)
        assert meta["quality"]["label_miou"] == pytest.approx(expected, abs=1e-6)
        assert 0.0 <= meta["quality"]["label_miou"] < 1.0
        # the per-pixel agreement member: the judge's prediction vs the reused labels
        agree = cv2.imdecode(np.frombuffer(s["agree.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        pred, gt = judge(np.ascontiguousarray(image), labels, segmenter, labelids=True)
        assert agree.shape == labels.shape and set(np.unique(agree)) <= {0, 1, 255}
        assert np.array_equal(agree == 255, gt == 255)
        assert np.array_equal(agree[gt != 255] == 1, (pred == gt)[gt != 255])
        assert meta["quality"]["label_agreement"] == pytest.approx((agree[gt != 255] == 1).mean(), abs=1e-6)

    # An unreachable threshold: every attempt is rejected for label consistency, with new seeds.
    gated = run(
        make_cfg(
            city_root,
            tmp_path / "gated",
            *seg,
            "quality.min_label_miou=1.0",
            "quality.max_attempts=2",
            limit=1,
        )
    )
    assert gated.counts == {"rejected": 2}
    rows = Manifest(tmp_path / "gated" / "manifest").rows()
    assert len(rows) == 4 and all(r["reason"].startswith("label_consistency:") for r in rows)
    assert sorted(r["attempt"] for r in rows) == [0, 0, 1, 1]
    assert len({r["seed"] for r in rows}) == 4
    assert list(read_shard_samples(sorted((tmp_path / "gated" / "shards").glob("*.tar")))) == []


def test_label_gate_without_segmenter_is_a_config_error(city_root, tmp_path):
    with pytest.raises(ConfigError, match="quality.segmenter"):
        make_cfg(city_root, tmp_path / "out", "quality.min_label_miou=0.5")


def _sample_members(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample's members by key (independent of how samples are grouped into shards)."""
    return {
        s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
        for s in read_shard_samples(sorted((out / "shards").glob("*.tar")))
    }


@pytest.mark.slow
def test_actor_killed_from_outside_is_replaced_and_its_shards_reassigned(
    baseline, city_root, ray_local, tmp_path
):
    """Fault (a) as an operator or the OOM killer causes it: SIGKILL to a live actor's process,
    found through Ray's state API, while the job runs in a driver thread."""
    import threading

    from ray.util.state import list_actors

    out = tmp_path / "out"
    # 6 one-sample shards of >= 1.5 s each on 2 actors: at the first finished shard, each actor
    # still holds unfinished shards for seconds, so a kill then always loses work.
    cfg = make_cfg(city_root, out, "samples_per_shard=1", "batch_size=1", "faults.delay_s=1.5")
    result: dict[str, object] = {}

    def drive() -> None:
        try:
            result["summary"] = run(cfg)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread below
            result["error"] = e

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    manifest = Manifest(out / "manifest")
    deadline = time.time() + 90
    actors = []
    while time.time() < deadline and driver.is_alive():
        if manifest.done_shards():
            actors = list_actors(
                address=ray_local,
                filters=[("class_name", "=", "GenerateStage"), ("state", "=", "ALIVE")],
                raise_on_missing_output=False,
            )
            if len(actors) == 2:
                break
        time.sleep(0.1)
    assert len(actors) == 2, f"no 2 live actors with a finished shard within 90 s ({result})"
    victim = sorted(a.pid for a in actors)[0]
    done_before = manifest.done_shards()
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.5)
    done_by_then = manifest.done_shards()  # the victim may have finished some shards before dying
    driver.join(timeout=120)
    assert not driver.is_alive(), "the job did not finish within 120 s of the kill"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    summary = result["summary"]

    assert len(done_before) <= 3, "the kill came too late to catch the actor with unfinished shards"
    assert summary.actors_died == 1 and summary.reassigned
    rows = manifest.rows()
    accepted = Counter(r["key"] for r in rows if r["status"] == "ok")
    assert len(accepted) == 6 and set(accepted.values()) == {1}
    assert len(manifest.done_shards()) == 6
    # The manifest shows the reassignment: the reassigned shards were written by another process.
    by_shard = {r["shard"]: r["worker"] for r in rows}
    assert set(summary.reassigned) <= set(by_shard) - done_by_then
    for shard, worker in by_shard.items():
        if shard not in done_by_then:
            assert not worker.endswith(f":{victim}"), f"{shard} written by the killed actor"
    # Same samples, byte for byte, as the uninterrupted 2-samples-per-shard baseline.
    assert _sample_members(out) == _sample_members(baseline[0])


def test_worker_decodes_each_reference_once_per_batch(city_root, tmp_path, monkeypatch):
    """Items are reference-major: a batch's variants of one reference share one decode, and the
    loader threads hand back every item, in order, with its own reference."""
    from factory.jobs import generate
    from factory.jobs.generate import GenerateStage, plan_items

    cfg = make_cfg(city_root, tmp_path / "out", "batch_size=4", "variants.sets=[fog, night, rain]")
    stage = GenerateStage(cfg, "run")
    stage.setup()
    calls: list[str] = []
    real_load = GenerateStage._load

    def counting_load(self, item):
        calls.append(item.ref.key)
        return real_load(self, item)

    monkeypatch.setattr(GenerateStage, "_load", counting_load)
    refs = generate.list_references(cfg.dataset)[:2]
    items = plan_items(refs, cfg.variants.build(), cfg.seed)  # 2 refs x 3 variants
    batches = list(stage.loaded_batches(items))
    stage.teardown()
    assert [len(b) for b in batches] == [4, 2]
    assert [it.key for b in batches for it, *_ in b] == [it.key for it in items]
    for b in batches:
        for it, sample, labels, problem in b:
            assert problem == "" and sample.key == it.ref.key and "labelids.png" in labels
    # batch 1 = ref0 x 3 + ref1 x 1, batch 2 = ref1 x 2: three decodes, not six
    assert sorted(calls) == sorted([refs[0].key, refs[1].key, refs[1].key])
