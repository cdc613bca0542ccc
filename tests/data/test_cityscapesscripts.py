"""The official cityscapesscripts accept the procedural Cityscapes.

- createTrainIdLabelImgs (found through CITYSCAPES_DATASET) converts every polygons file, and its
  trainIds agree with our label table applied to the labelIds map;
- the pixel-level evaluator scores the ground truth used as prediction at mIoU 1.0;
- its official CLI (``csEvalPixelLevelSemanticLabeling``) stops on numpy >= 2.4 (``np.in1d`` is
  gone) and runs through ``python -m downstream.cityscapes_eval``, whose mIoU and per-class IoUs
  equal ours (downstream.segformer.evaluate and factory.quality.segmenter) on the same predictions;
- the 3D box annotation class parses every gtBbox3d file, and its own projection of each box
  gives the amodal 2D box we wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.data.cityscapes import list_cityscapes, load_sample
from factory.data.labels import id_to_trainid, trainid_to_id

REPO = Path(__file__).resolve().parents[2]


def test_create_train_id_label_imgs(small_city, monkeypatch):
    from cityscapesscripts.preparation import createTrainIdLabelImgs

    root = small_city / "cityscapes"
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    createTrainIdLabelImgs.main()
    outputs = sorted((root / "gtFine").rglob("*_gtFine_labelTrainIds.png"))
    assert len(outputs) == 3 + 2
    for split in ("train", "val"):
        for ref in list_cityscapes(root, split).refs:
            assert "labeltrainids" in ref.label_kinds  # the reader now finds the new files
            s = load_sample(ref)
            np.testing.assert_array_equal(s.trainids, id_to_trainid(s.semantic))


def test_pixel_level_evaluation_of_ground_truth_is_perfect(small_city):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    gts = sorted(
        str(p) for p in (small_city / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png")
    )
    assert len(gts) == 2
    args = ev.args
    args.quiet = True
    args.JSONOutput = False
    args.evalInstLevelScore = False  # uses np.in1d, removed in numpy 2.4 (see downstream.cityscapes_eval)
    args.evalPixelAccuracy = False
    result = ev.evaluateImgLists(list(gts), list(gts), args)
    assert result["averageScoreClasses"] == pytest.approx(1.0)
    present = {name: v for name, v in result["classScores"].items() if not np.isnan(v)}
    assert "road" in present and len(present) >= 4
    assert all(v == pytest.approx(1.0) for v in present.values())


def _official_cli(module: str, root: Path, results: Path, export: Path) -> subprocess.CompletedProcess:
    """The pixel-level evaluator's CLI run the documented way: no arguments, folders by env."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CITYSCAPES_DATASET": str(root),
        "CITYSCAPES_RESULTS": str(results),
        "CITYSCAPES_EXPORT_DIR": str(export),
    }
    return subprocess.run(
        [sys.executable, "-m", module], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _gt_as_predictions(root: Path, results: Path) -> list[Path]:
    results.mkdir()
    gts = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    for gt in gts:
        (results / gt.name.replace("_gtFine_labelIds.png", "_pred_labelIds.png")).write_bytes(gt.read_bytes())
    return gts


def test_official_pixel_cli_runs_through_the_numpy_shim(small_city, tmp_path):
    root = small_city / "cityscapes"
    results = tmp_path / "results"
    assert len(_gt_as_predictions(root, results)) == 2
    stock = _official_cli(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling", root, results, tmp_path
    )
    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":  # the reason downstream.cityscapes_eval exists
        assert stock.returncode != 0 and "in1d" in stock.stderr, stock.stderr[-2000:]
    done = _official_cli("downstream.cityscapes_eval", root, results, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "resultPixelLevelSemanticLabeling.json").read_text())
    # the instance-weighted scores (nIoU) are the part that needed np.in1d
    assert result["averageScoreClasses"] == pytest.approx(1.0)
    assert result["averageScoreInstClasses"] == pytest.approx(1.0)


def test_our_miou_equals_the_official_cli(small_city, tmp_path):
    """Predictions = ground truth with blocks of wrong classes; written as labelIds PNGs the way
    downstream.segformer.evaluate writes them (``<key>_pred_labelIds.png``)."""
    from downstream.segformer.evaluate import ConfusionMatrix
    from factory.quality.segmenter import confusion, miou_from_confusion

    root = small_city / "cityscapes"
    results = tmp_path / "results"
    results.mkdir()
    rng = np.random.default_rng(0)
    ours, cm = ConfusionMatrix(), np.zeros((19, 19), np.int64)
    for gt_path in sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png")):
        gt = id_to_trainid(np.asarray(Image.open(gt_path)))
        pred = np.where(gt == 255, rng.integers(0, 19), gt).astype(np.uint8)
        for _ in range(8):  # rectangles of random classes: confusions, some classes absent
            y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 16)
            pred[y : y + 8, x : x + 16] = rng.integers(0, 19)
        ours.update(pred, gt)
        cm += confusion(pred, gt)
        key = gt_path.name.removesuffix("_gtFine_labelIds.png")
        Image.fromarray(trainid_to_id(pred).astype(np.uint8)).save(results / f"{key}_pred_labelIds.png")
    done = _official_cli("downstream.cityscapes_eval", root, results, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    official = json.loads((tmp_path / "resultPixelLevelSemanticLabeling.json").read_text())
    assert 0.1 < official["averageScoreClasses"] < 0.99
    assert ours.miou() == pytest.approx(100 * official["averageScoreClasses"], abs=1e-9)
    assert miou_from_confusion(cm) == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    per_class = ours.summary()["per_class"]
    for name, v in per_class.items():
        assert (v is None) == (
            official["classScores"][name] is None or np.isnan(official["classScores"][name])
        )
        if v is not None:
            assert v == pytest.approx(100 * official["classScores"][name], abs=1e-9), name


def test_in1d_shim_is_numpys_definition_and_never_replaces_numpys(monkeypatch):
    from downstream import cityscapes_eval

    a, b = np.array([[1, 2], [3, 4]]), [2, 4, 9]
    np.testing.assert_array_equal(cityscapes_eval._in1d(a, b), [False, True, False, True])
    np.testing.assert_array_equal(cityscapes_eval._in1d(a, b, invert=True), [True, False, True, False])
    # numpy is left as it was after this test (monkeypatch undoes both steps)
    existing = object()
    monkeypatch.setattr(np, "in1d", existing, raising=False)
    cityscapes_eval.ensure_in1d()
    assert np.in1d is existing  # one that exists is never replaced
    monkeypatch.delattr(np, "in1d")
    cityscapes_eval.ensure_in1d()
    assert np.in1d is cityscapes_eval._in1d


def test_bbox3d_annotation_class_parses_every_file(city_root):
    from cityscapesscripts.helpers.annotation import Annotation, CsBbox3d, CsObjectType
    from cityscapesscripts.helpers.box3dImageTransform import Box3dImageTransform, Camera

    files = sorted((city_root / "cityscapes" / "gtBbox3d").rglob("*_gtBbox3d.json"))
    assert len(files) == 10
    n_boxes = 0
    for f in files:
        ann = Annotation(objType=CsObjectType.BBOX3D)
        ann.fromJsonFile(str(f))
        assert (ann.imgWidth, ann.imgHeight) == (128, 64) and ann.camera is not None
        cam = Camera(ann.camera.fx, ann.camera.fy, ann.camera.u0, ann.camera.v0, ann.camera.sensor_T_ISO_8855,
                     imgWidth=128, imgHeight=64)  # fmt: skip
        for obj in ann.objects:
            assert isinstance(obj, CsBbox3d) and obj.label == "car" and obj.instanceId // 1000 == 26
            box = Box3dImageTransform(cam)
            box.initialize_box_from_annotation(obj)
            np.testing.assert_allclose(box.get_amodal_box_2d(), obj.bbox_2d.bbox_amodal, atol=1e-3)
            # The visible (modal) box lies inside the amodal one and covers the instance's pixels.
            mx0, my0, mx1, my1 = obj.bbox_2d.bbox_modal
            ax0, ay0, ax1, ay1 = obj.bbox_2d.bbox_amodal
            assert ax0 - 1 <= mx0 and ay0 - 1 <= my0 and mx1 <= ax1 + 1.5 and my1 <= ay1 + 1.5
            inst = np.asarray(
                Image.open(
                    str(f).replace("gtBbox3d", "gtFine").replace("_gtFine.json", "_gtFine_instanceIds.png")
                )
            )
            ys, xs = np.nonzero(inst == obj.instanceId)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (mx0, my0, mx1, my1)
            n_boxes += 1
    assert n_boxes >= 5


def test_polygons_redraw_to_the_label_maps(city_root):
    """json2labelImg / createInstanceImage on our polygons reproduce labelIds and instanceIds exactly."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    for ref in list_cityscapes(city_root / "cityscapes", "train").refs:
        ann = Annotation()
        ann.fromJsonFile(str(ref.paths["polygons"]))
        s = load_sample(ref)
        np.testing.assert_array_equal(np.asarray(createLabelImage(ann, "ids")), s.semantic)
        np.testing.assert_array_equal(np.asarray(createInstanceImage(ann, "ids")), s.instance)
