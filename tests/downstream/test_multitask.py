"""The multi-task network (semantics + depth + 3D boxes): geometry against cityscapesscripts'
own 3D tools and evaluator, data from folders and shards, training, resume, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from downstream.multitask.data import TargetSpec, list_refs, prepare
from downstream.multitask.evaluate import DepthMetrics, gt_ceiling, score_3d
from downstream.multitask.geometry import (
    SensorView,
    decode_boxes,
    encode_boxes,
    perfect_outputs,
    wrap,
    yaw_of,
)
from downstream.multitask.train import MultitaskConfig, draw_schedule, main, train
from factory.config import ConfigError, from_dict
from factory.data.cityscapes import list_cityscapes
from factory.data.sample import DataError
from factory.shards.writer import ShardWriter, label_files

CLASSES = ("car",)
TINY_MODEL = {"embed_dims": 8, "num_layers": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "channels": 16}


def _val_refs(cs_root: Path):
    return list_refs("cityscapes", cs_root, "val")


def _nearest(gt_objects, centre):
    return min(gt_objects, key=lambda g: np.linalg.norm(np.subtract(g["3d"]["center"], centre)))


@pytest.mark.parametrize("size", [(64, 128), (128, 256)])
def test_boxes_survive_encode_decode(cs_root, size):
    """Every box whose centre is in view comes back from a perfect network's outputs, in the
    vehicle frame, through cityscapesscripts' Box3dImageTransform - also at another input size."""
    n_gt = n_back = 0
    for ref in list_refs("cityscapes", cs_root, "train") + _val_refs(cs_root):
        gt = json.loads(ref.paths["boxes3d"].read_text())
        targets = encode_boxes(gt, size, 4, CLASSES, 32)
        hm, reg = perfect_outputs(targets)
        objs = decode_boxes(hm, reg, SensorView.from_boxes3d(gt, size), CLASSES, 4)
        # two centres in one output cell keep one peak (CenterNet's limit): count cells
        n_gt += len(set(targets.index[targets.mask > 0].tolist()))
        n_back += len(objs)
        for o in objs:
            g = _nearest(gt["objects"], o["3d"]["center"])
            assert np.allclose(o["3d"]["center"], g["3d"]["center"], atol=1e-4)
            assert np.allclose(o["3d"]["dimensions"], g["3d"]["dimensions"], rtol=1e-5)
            assert abs(wrap(yaw_of(o["3d"]["rotation"]) - yaw_of(g["3d"]["rotation"]))) < 1e-5
            assert o["score"] == pytest.approx(1.0)
    assert n_gt >= 5 and n_back == n_gt


def test_observation_angle_depends_on_where_the_car_is():
    """Same yaw, left and right of the camera: different regression targets (the network sees
    the observation angle), and both decode back to that yaw."""
    sensor = {"fx": 100.0, "fy": 100.0, "u0": 64.0, "v0": 32.0, "baseline": 0.2,
              "sensor_T_ISO_8855": [[1, 0, 0, -1.7], [0, 1, 0, -0.1], [0, 0, 1, -1.2]]}  # fmt: skip
    objs = [
        {"label": "car", "2d": {"amodal": [0, 0, 10, 10]},
         "3d": {"center": [20.0, y, 0.8], "dimensions": [4.0, 1.8, 1.5], "rotation": [1, 0, 0, 0]}}
        for y in (6.0, -6.0)
    ]  # fmt: skip
    gt = {"imgWidth": 128, "imgHeight": 64, "sensor": sensor, "objects": objs}
    t = encode_boxes(gt, (64, 128), 4, CLASSES, 8)
    assert t.mask.sum() == 2
    a_left, a_right = (math.atan2(t.reg[k, 6], t.reg[k, 7]) for k in range(2))
    # alpha = yaw - azimuth of the ray from the camera (at x=1.7, y=0.1 in the vehicle frame)
    assert a_left == pytest.approx(-math.atan2(6.0 - 0.1, 20.0 - 1.7), abs=1e-6)  # float32 targets
    assert a_right == pytest.approx(math.atan2(6.0 + 0.1, 20.0 - 1.7), abs=1e-6)  # float32 targets
    back = decode_boxes(*perfect_outputs(t), SensorView.from_boxes3d(gt, (64, 128)), CLASSES, 4)
    assert sorted(round(yaw_of(o["3d"]["rotation"]), 6) for o in back) == [0.0, 0.0]


def test_official_evaluator_scores_decoded_ground_truth_like_ground_truth(cs_root, tmp_path):
    """cityscapesscripts' evaluate3dObjectDetection gives perfect outputs, decoded, the score of
    the very ground-truth boxes they came from; a depth error of 30% scores lower."""
    refs = _val_refs(cs_root)
    size = (64, 128)
    perfect, recovered, skewed = {}, {}, {}
    for ref in refs:
        gt = json.loads(ref.paths["boxes3d"].read_text())
        hm, reg = perfect_outputs(encode_boxes(gt, size, 4, CLASSES, 32))
        view = SensorView.from_boxes3d(gt, size)
        perfect[ref.key] = decode_boxes(hm, reg, view, CLASSES, 4)
        # the ground-truth objects themselves (centre in view, one per output cell)
        recovered[ref.key] = [
            {**_nearest(gt["objects"], o["3d"]["center"]), "score": 1.0} for o in perfect[ref.key]
        ]
        reg_far = reg.copy()
        reg_far[2] += math.log(1.3)
        skewed[ref.key] = decode_boxes(hm, reg_far, view, CLASSES, 4)
    files = {r.key: r.paths["boxes3d"] for r in refs}
    got = score_3d(files, perfect, tmp_path / "perfect", CLASSES, min_iou=0.5)
    want = score_3d(files, recovered, tmp_path / "gt", CLASSES, min_iou=0.5)
    bad = score_3d(files, skewed, tmp_path / "skewed", CLASSES, min_iou=0.5)
    assert want["mDetection_Score"] > 50
    assert got == pytest.approx(want, abs=1e-3)
    assert got["mCenter_Dist"] == pytest.approx(100.0, abs=1e-3)
    # the official centre score is 1 - BEV distance / 100 m: 30% of ~20 m costs ~6 points
    assert bad["mCenter_Dist"] < got["mCenter_Dist"] - 5
    assert bad["mDetection_Score"] < got["mDetection_Score"] - 1
    assert (tmp_path / "perfect" / "results.json").is_file()
    ceiling = gt_ceiling(refs, tmp_path / "ceiling", CLASSES, min_iou=0.5)
    assert ceiling["mDetection_Score"] >= got["mDetection_Score"]
    assert not Path("eval.log").exists()


def test_depth_metrics_on_known_values():
    gt = np.array([[10.0, 20.0], [0.0, 100.0]], np.float32)  # 0 invalid, 100 beyond max_depth
    m = DepthMetrics(max_depth=80)
    m.update(np.array([[10.0, 30.0], [5.0, 1.0]], np.float32), gt)
    s = m.summary()
    assert s["pixels"] == 2
    assert s["AbsRel"] == pytest.approx(0.25)  # (0 + 10/20) / 2
    assert s["RMSE"] == pytest.approx(math.sqrt(50.0))
    assert s["delta1"] == pytest.approx(50.0)  # 30/20 = 1.5 fails 1.25


def _write_variant_shard(cs_root: Path, out: Path, downscale: int = 2, corrupt: str | None = None) -> Path:
    """A shard the way the generation job writes one: a smaller image per reference and the
    reference's own label files (disparity, camera, gtBbox3d included), key <ref>__fog."""
    out.mkdir(parents=True, exist_ok=True)
    refs = list_cityscapes(cs_root, "train").refs
    with_labels = ShardWriter(out / "shard-000000.tar")
    for ref in refs:
        rgb = cv2.imread(str(ref.paths["image"]))[:, :, ::-1]
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (w // downscale, h // downscale), interpolation=cv2.INTER_AREA)
        meta = {"source_key": ref.key, "variant": "fog", "image_size": [h // downscale, w // downscale],
                "label_size": [h, w]}  # fmt: skip
        labels = label_files(ref)
        if corrupt == ref.key:
            bad = out.parent / "bad_disparity.png"
            bad.write_bytes(b"not a png")
            labels["disparity.png"] = bad
        with_labels.add(f"{ref.key}__fog", np.ascontiguousarray(small), labels, meta)
    with_labels.close()
    return out


def test_shard_sample_gives_the_references_targets(cs_root, tmp_path):
    shards = _write_variant_shard(cs_root, tmp_path / "synth")
    spec = TargetSpec((64, 128), 4, CLASSES, 32)
    synth = {r.meta["source_key"]: r for r in list_refs("shards", shards, "train")}
    real = list_refs("cityscapes", cs_root, "train")
    assert set(synth) == {r.key for r in real}
    for ref in real:
        a, b = prepare(ref, spec), prepare(synth[ref.key], spec)
        assert b.image.shape == a.image.shape == (3, 64, 128)  # the half-size image resized up
        assert torch.equal(a.trainids, b.trainids) and torch.equal(a.depth, b.depth)
        assert np.array_equal(a.boxes.heatmap, b.boxes.heatmap) and np.array_equal(a.boxes.reg, b.boxes.reg)
        assert (a.depth > 0).float().mean() > 0.3


def test_a_shard_that_lost_samples_is_refused_against_its_manifest(cs_root, tmp_path, job_record):
    """A job's shard cut at a member boundary (a valid, shorter tar) was trained on with the
    samples left; the manifest part beside it records them all: an error naming the shard."""
    shards = _write_variant_shard(cs_root, tmp_path / "job" / "shards")
    shard = shards / "shard-000000.tar"
    job_record.record(shard)
    assert len(list_refs("shards", shards, "train")) == 6
    lost = job_record.cut(shard)
    with pytest.raises(
        DataError, match=r"shard-000000\.tar: holds 5 samples but its manifest part .* records 6"
    ) as err:
        list_refs("shards", shards, "train")
    assert err.value.path == shard and lost in str(err.value) and "rerun the generation job" in str(err.value)


def test_shards_without_3d_labels_are_refused_by_name(ref_shards):
    with pytest.raises(DataError, match=r"has no \['disparity', 'camera', 'boxes3d'\]") as e:
        list_refs("shards", ref_shards[0].parent, "train")
    assert "ref-000000.tar" in str(e.value)


def test_draw_schedule_keeps_ratio_and_visits_every_sample():
    s = draw_schedule(5, 15, 0.75, 40, seed=3)
    synth = [i >= 5 for i in s]
    assert sum(synth) == 30 and all(sum(synth[:n]) == math.floor(n * 0.75 + 1e-9) for n in range(41))
    real_draws, synth_draws = [i for i in s if i < 5], [i for i in s if i >= 5]
    assert sorted(real_draws[:5]) == [0, 1, 2, 3, 4]  # each pass is a permutation
    assert sorted(synth_draws[:15]) == sorted(synth_draws[15:30]) == list(range(5, 20))
    assert draw_schedule(4, 0, 0.5, 8, seed=0) and all(i < 4 for i in draw_schedule(4, 0, 0.5, 8, seed=0))


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"real": None}, "real"),
        ({"size": [64, 100]}, "size"),
        ({"eval": {"min_iou": 0}}, "eval.min_iou"),
        ({"model": {"num_heads": [1, 2]}}, "model.num_heads"),
        ({"iters": -1}, "iters"),
        ({"lerning_rate": 0.1}, "lerning_rate"),
    ],
)
def test_bad_config_names_the_field(patch, field):
    base = {"real": {"kind": "cityscapes", "root": "x"}}
    with pytest.raises(ConfigError, match=field):
        from_dict(MultitaskConfig, {**base, **patch})


def _cfg(cs_root: Path, out: Path, **kw) -> MultitaskConfig:
    data = {
        "real": {"kind": "cityscapes", "root": str(cs_root)},
        "size": [64, 128],
        "model": TINY_MODEL,
        "iters": 6,
        "batch_size": 2,
        "checkpoint_every": 3,
        "out": str(out),
        **kw,
    }
    return from_dict(MultitaskConfig, data)


def test_resume_reaches_the_uninterrupted_weights(cs_root, tmp_path, monkeypatch):
    import downstream.multitask.train as mt

    train(_cfg(cs_root, tmp_path / "straight"))
    straight = torch.load(tmp_path / "straight" / "latest.pt", weights_only=True)

    real_losses = mt.losses
    calls = []

    def die_in_step_4(*args):
        calls.append(1)
        if len(calls) == 5:  # step 4: after the step-3 checkpoint and step 3's log line
            raise KeyboardInterrupt("killed during step 4")
        return real_losses(*args)

    monkeypatch.setattr(mt, "losses", die_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(cs_root, tmp_path / "killed"))
    monkeypatch.setattr(mt, "losses", real_losses)
    summary = train(_cfg(cs_root, tmp_path / "killed"), resume=True)
    resumed = torch.load(tmp_path / "killed" / "latest.pt", weights_only=True)
    assert summary["resumed_at"] == 3 and resumed["step"] == 6
    logged = [json.loads(x)["step"] for x in (tmp_path / "killed" / "losses.jsonl").read_text().splitlines()]
    assert logged == list(range(6))  # step 3 ran twice (before and after the kill), logged once
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_the_gpu_code_path_runs_on_the_cpu_device_with_bf16_and_loader_workers(cs_root, tmp_path):
    """Device placement, mixed precision and loader workers are one code path whatever the
    device: here the config names the CPU, bf16 autocast and a worker process; the weights stay
    float32, the losses finite, and evaluation runs on the model's device."""
    cfg = _cfg(
        cs_root, tmp_path / "bf16", device="cpu", amp="bf16", num_workers=1,
        val={"kind": "cityscapes", "root": str(cs_root), "split": "val"}, eval={"limit": 2},
    )  # fmt: skip
    summary = train(cfg)
    assert summary["device"] == "cpu" and summary["amp"] == "bf16"
    losses_logged = [json.loads(x) for x in (tmp_path / "bf16" / "losses.jsonl").read_text().splitlines()]
    assert len(losses_logged) == 6 and all(np.isfinite(r["total"]) for r in losses_logged)
    state = torch.load(tmp_path / "bf16" / "latest.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert np.isfinite(summary["eval"]["semantic"]["mIoU"])
    # the same steps without autocast differ (bf16 really ran) but stay close
    plain = train(_cfg(cs_root, tmp_path / "fp32", device="cpu"))
    plain_losses = [json.loads(x) for x in (tmp_path / "fp32" / "losses.jsonl").read_text().splitlines()]
    assert plain["amp"] == "none" and plain_losses[0]["total"] != losses_logged[0]["total"]
    assert abs(plain_losses[0]["total"] - losses_logged[0]["total"]) < 0.05 * abs(plain_losses[0]["total"])


def test_a_device_that_is_not_there_or_fp16_on_a_cpu_is_a_clear_error(cs_root, tmp_path):
    from factory.models import ModelError

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            train(_cfg(cs_root, tmp_path / "a", device="cuda"))
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(_cfg(cs_root, tmp_path / "b", device="cpu", amp="fp16"))


def test_planted_pretrained_or_resume_checkpoint_is_refused_by_name(
    cs_root, planted_checkpoint, tmp_path, monkeypatch
):
    """The encoder's pretrained weights (read by mmengine) and ``--resume``'s latest.pt go through
    downstream's safe loader: a planted pickle is refused naming the file, and never runs."""
    from downstream.checkpoints import CheckpointError
    from downstream.multitask.model import ModelConfig, MultiTaskNet

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    bad, marker = planted_checkpoint
    with pytest.raises(CheckpointError, match="refused") as err:
        MultiTaskNet(ModelConfig(**TINY_MODEL, pretrained=str(bad)))
    assert err.value.path == bad and not marker.exists()

    out = tmp_path / "run"
    out.mkdir()
    bad.rename(out / "latest.pt")
    with pytest.raises(CheckpointError, match="refused") as err:
        train(_cfg(cs_root, out), resume=True)
    assert err.value.path == out / "latest.pt" and not marker.exists()


def test_bad_sample_is_recorded_and_training_goes_on(cs_root, tmp_path):
    victim = list_cityscapes(cs_root, "train").refs[1].key
    shards = _write_variant_shard(cs_root, tmp_path / "synth", corrupt=victim)
    cfg = _cfg(cs_root, tmp_path / "run", synth={"kind": "shards", "root": str(shards)}, iters=8)
    summary = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert summary["bad_samples"] == len(lines) >= 1
    assert {x["key"] for x in lines} == {f"{victim}__fog"}
    assert "disparity.png" in lines[0]["reason"]
    assert summary["steps"] == 8 and (tmp_path / "run" / "latest.pt").is_file()


def test_a_sample_with_out_of_range_label_ids_is_a_bad_item_not_a_crash(cs_root, tmp_path):
    """labelIds holding 250: the multi-task dataset hands the trainer a ``bad`` item (logged to
    bad_samples.jsonl, as the corrupt-disparity test above shows) instead of raising."""
    import shutil

    from PIL import Image

    from downstream.multitask.data import MultitaskDataset

    root = tmp_path / "cityscapes"
    shutil.copytree(cs_root, root)
    refs = list_refs("cityscapes", root, "train")
    labels = np.array(Image.open(refs[0].paths["labelids"]))
    labels[:4, :4] = 250
    Image.fromarray(labels).save(refs[0].paths["labelids"])
    ds = MultitaskDataset(refs, TargetSpec((64, 128), 4, CLASSES, 32))
    key, reason = ds[0]["bad"]
    assert key == refs[0].key and "values [250] are outside Cityscapes labelIds" in reason
    assert "bad" not in ds[1]


@pytest.mark.slow
def test_cli_trains_all_three_tasks_and_evaluates(cs_root, tmp_path):
    """Real + synthetic, 120 steps on the test city: every loss falls, and the evaluation runs
    all three tasks through their evaluators on the val images."""
    shards = _write_variant_shard(cs_root, tmp_path / "synth")
    out = tmp_path / "run"
    summary = main(
        [
            "--config", str(Path(__file__).parents[2] / "configs/downstream/multitask_procedural.yaml"),
            f"real.root={cs_root}", f"val.root={cs_root}", f"synth={{kind: shards, root: {shards}}}",
            "iters=120", "checkpoint_every=60", f"out={out}",
        ]
    )  # fmt: skip
    hist = [json.loads(x) for x in (out / "losses.jsonl").read_text().splitlines()]
    for task in ("semantic", "depth", "heatmap", "total"):
        first = np.mean([h[task] for h in hist[:10]])
        last = np.mean([h[task] for h in hist[-10:]])
        assert last < 0.8 * first, (task, first, last)
    e = summary["eval"]
    assert e["images"] == 4 and summary["synth"] == summary["real"] == 6
    assert 0 < e["semantic"]["mIoU"] <= 100 and e["depth"]["pixels"] > 0
    assert e["depth"]["delta1"] > 20
    assert set(e["det3d"]) >= {"mDetection_Score", "mAP", "mCenter_Dist"}
    assert len(list((out / "eval" / "det3d" / "predBbox3d").glob("*_pred.json"))) == 4
    assert json.loads((out / "eval" / "metrics.json").read_text()) == e
    assert cv2.imread(str(out / "eval" / "predictions.png")).shape[1] > 4 * 384


@pytest.mark.slow
def test_multitask_benchmark_table(cs_root, tmp_path, monkeypatch):
    """The Table-3 benchmark trains the three mixes, scores each with the three evaluators and
    writes the table, the JSON and the plot."""
    from downstream.benchmarks.multitask import COLUMNS
    from downstream.benchmarks.multitask import main as bench

    shards = _write_variant_shard(cs_root, tmp_path / "synth")
    out = tmp_path / "bench"
    argv = [
        "--lumen", str(shards), "--seeds", "0", "--out", str(out),
        f"real.root={cs_root}", f"val.root={cs_root}", "iters=4", "batch_size=2",
        "model.embed_dims=8", "model.num_heads=[1, 1, 2, 2]", "model.channels=16",
    ]  # fmt: skip
    result = bench(argv)
    assert list(result["summary"]) == ["real", "LUMEN", "real + LUMEN"]
    for mix, cols in result["summary"].items():
        assert set(cols) == set(COLUMNS) and cols["mIoU"]["n"] == 1
        run = json.loads((out / mix.replace(" + ", "+") / "seed0" / "summary.json").read_text())
        assert (run["real"], run["synth"]) == {"real": (6, 0), "LUMEN": (0, 6), "real + LUMEN": (6, 6)}[mix]
    assert 0 < result["gt_ceiling"]["mDetection_Score"] <= 100
    assert (out / "multitask.png").stat().st_size > 1000 and (out / "multitask.json").is_file()
    # a rerun trains nothing that finished; a run whose scores are lost resumes from latest.pt
    import downstream.multitask.train as mt

    calls: list[bool] = []
    real_train = mt.train
    monkeypatch.setattr(
        mt, "train", lambda cfg, resume=False: calls.append(resume) or real_train(cfg, resume=resume)
    )
    (out / "LUMEN" / "seed0" / "scores.json").unlink()
    again = bench(argv)
    assert calls == [True] and again["runs"] == result["runs"]


@pytest.mark.parametrize("name", ["multitask_procedural.yaml", "multitask_cityscapes.yaml"])
def test_shipped_multitask_configs_build(name):
    """Both shipped configs validate and their network runs (the Cityscapes one at a small input,
    random weights: its MiT checkpoint is not here - and saying so is the test's other half)."""
    from downstream.multitask.model import MultiTaskNet
    from factory.config import load_config

    cfg = load_config(MultitaskConfig, Path(__file__).parents[2] / "configs" / "downstream" / name)
    if cfg.model.pretrained:
        with pytest.raises(FileNotFoundError, match="model.pretrained"):
            MultiTaskNet(cfg.model, len(cfg.box_classes))
        cfg.model.pretrained = None
    net = MultiTaskNet(cfg.model, len(cfg.box_classes)).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 128))
    assert out["semantic"].shape == (1, 19, 16, 32)
    assert out["heatmap"].shape == (1, len(cfg.box_classes), 16, 32)
    assert out["box_reg"].shape == (1, 8, 16, 32) and out["log_depth"].shape == (1, 16, 32)


def test_evaluation_skips_a_corrupt_val_image_and_says_so(cs_root, tmp_path):
    import shutil

    from downstream.multitask.evaluate import evaluate
    from downstream.multitask.model import ModelConfig, MultiTaskNet

    root = tmp_path / "cityscapes"
    shutil.copytree(cs_root, root)
    refs = _val_refs(root)
    refs[0].paths["image"].write_bytes(b"\x89PNG truncated")
    torch.manual_seed(0)
    net = MultiTaskNet(ModelConfig(**TINY_MODEL))
    m = evaluate(net, refs, TargetSpec((64, 128), 4, CLASSES, 32), tmp_path / "eval", min_iou=0.5)
    assert m["images"] == len(refs) - 1
    assert [s["key"] for s in m["skipped"]] == [refs[0].key]
    assert refs[0].paths["image"].name in m["skipped"][0]["reason"]
    gt_copies = sorted(p.name for p in (tmp_path / "eval" / "det3d" / "gtBbox3d").iterdir())
    assert gt_copies == sorted(f"{r.key}_gtBbox3d.json" for r in refs[1:])


def test_sample_cache_changes_nothing_but_speed(cs_root, tmp_path):
    plain = train(_cfg(cs_root, tmp_path / "plain", iters=4))
    cached = train(_cfg(cs_root, tmp_path / "cached", iters=4, cache=True))
    a = torch.load(tmp_path / "plain" / "latest.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cached" / "latest.pt", weights_only=True)["model"]
    assert plain["steps"] == cached["steps"] == 4
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_make_target_passes_synth_as_one_override():
    """`make train-multitask SYNTH=...` hands the config loader one `synth={...}` override (a
    comma inside make's $(if ...) once split it and broke the shell command)."""
    import shlex
    import subprocess

    repo = Path(__file__).parents[2]
    cmd = subprocess.run(
        ["make", "-n", "-s", "train-multitask", "SYNTH=out/shards", "TRAIN_ARGS=iters=5"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    argv = shlex.split(cmd)
    assert argv[1:4] == ["-m", "downstream.multitask.train", "--config"]
    from factory.config import load_config

    got = load_config(MultitaskConfig, repo / argv[4], argv[5:])
    assert got.synth is not None and (got.synth.kind, got.synth.root) == ("shards", "out/shards")
    assert got.iters == 5


def test_mirrored_targets_mirror_the_centre_and_the_observation_angle(cs_root):
    size, s = (64, 128), 4
    for ref in list_refs("cityscapes", cs_root, "train"):
        gt = json.loads(ref.paths["boxes3d"].read_text())
        a = encode_boxes(gt, size, s, CLASSES, 32)
        b = encode_boxes(gt, size, s, CLASSES, 32, flip=True)
        assert a.mask.sum() == b.mask.sum()
        for k in np.nonzero(a.mask)[0]:
            ua = (a.index[k] % (size[1] // s) + a.reg[k, 0]) * s
            ub = (b.index[k] % (size[1] // s) + b.reg[k, 0]) * s
            assert ub == pytest.approx(size[1] - ua, abs=1e-4)
            assert a.index[k] // (size[1] // s) == b.index[k] // (size[1] // s)  # same row
            assert np.allclose(b.reg[k, 1:6], a.reg[k, 1:6])  # v offset, depth, dimensions
            assert math.atan2(b.reg[k, 6], b.reg[k, 7]) == pytest.approx(
                -math.atan2(a.reg[k, 6], a.reg[k, 7]), abs=1e-6
            )


def test_dataset_mirror_index_is_the_flipped_sample(cs_root):
    from downstream.multitask.data import MultitaskDataset

    refs = list_refs("cityscapes", cs_root, "train")
    ds = MultitaskDataset(refs, TargetSpec((64, 128), 4, CLASSES, 32))
    assert len(ds) == 2 * len(refs)
    i = max(range(len(refs)), key=lambda j: len(json.loads(refs[j].paths["boxes3d"].read_text())["objects"]))
    a, b = ds[i], ds[len(refs) + i]
    for name in ("image", "trainids", "depth"):
        assert torch.equal(b[name], torch.flip(a[name], dims=[-1])), name
    assert a["box_mask"].sum() > 0 and torch.equal(b["box_mask"], a["box_mask"])
    assert torch.allclose(b["box_reg"][:, 2:6], a["box_reg"][:, 2:6])  # depth and size unchanged


def test_schedule_flips_the_requested_share_of_draws():
    n = 20
    plain = draw_schedule(5, 15, 0.75, 400, seed=3)
    mixed = draw_schedule(5, 15, 0.75, 400, seed=3, flip=0.5)
    assert [i % n for i in mixed] == plain  # same samples in the same order
    share = np.mean([i >= n for i in mixed])
    assert 0.4 < share < 0.6
    assert draw_schedule(5, 15, 0.75, 40, seed=3, flip=0.0) == draw_schedule(5, 15, 0.75, 40, seed=3)


def test_agreement_ignore_masks_the_judges_disagreements_in_the_semantic_target(cs_root, tmp_path):
    """``synth.agreement_ignore``: the semantic target is 255 where agree.png is 0 and the reused
    class elsewhere (depth and boxes untouched); off (the default) the target is the reused label;
    a shard without the member is refused when the switch is on, naming the sample."""
    from factory.data.labels import id_to_trainid
    from factory.shards.writer import encode_mask

    ref = list_cityscapes(cs_root, "train").refs[0]
    labelids = np.asarray(cv2.imread(str(ref.paths["labelids"]), cv2.IMREAD_UNCHANGED))
    agree = np.ones(labelids.shape, np.uint8)
    agree[:, : labelids.shape[1] // 2] = 0  # the judge disagrees on the left half
    image = cv2.cvtColor(cv2.imread(str(ref.paths["image"])), cv2.COLOR_BGR2RGB)
    for name, extra in (("agree", {"agree.png": encode_mask(agree)}), ("plain", None)):
        w = ShardWriter(tmp_path / name / "shard-000000.tar")
        w.add(f"{ref.key}__fog", image, label_files(ref), {"source_key": ref.key}, extra)
        w.close()
    spec = TargetSpec(size=labelids.shape, box_classes=CLASSES)
    expected = id_to_trainid(labelids)
    (off_ref,) = list_refs("shards", tmp_path / "agree", "train")
    (on_ref,) = list_refs("shards", tmp_path / "agree", "train", agreement_ignore=True)
    off, on = prepare(off_ref, spec), prepare(on_ref, spec)
    assert np.array_equal(off.trainids.numpy(), expected)
    assert (on.trainids.numpy()[agree == 0] == 255).all()
    assert np.array_equal(on.trainids.numpy()[agree == 1], expected[agree == 1])
    assert torch.equal(on.depth, off.depth) and np.array_equal(on.boxes.heatmap, off.boxes.heatmap)
    with pytest.raises(DataError, match=r"__fog\.agree\.png.*no agreement member"):
        list_refs("shards", tmp_path / "plain", "train", agreement_ignore=True)
    with pytest.raises(ConfigError, match="agreement_ignore"):
        from_dict(
            MultitaskConfig, {"real": {"kind": "cityscapes", "root": str(cs_root), "agreement_ignore": True}}
        )
