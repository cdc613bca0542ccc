"""The official cityscapesscripts accept the procedural Cityscapes.

- createTrainIdLabelImgs (found through CITYSCAPES_DATASET) converts every polygons file, and its
  trainIds agree with our label table applied to the labelIds map;
- the pixel-level evaluator scores the ground truth used as prediction at mIoU 1.0;
- the 3D box annotation class parses every gtBbox3d file, and its own projection of each box
  gives the amodal 2D box we wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from factory.data.cityscapes import list_cityscapes, load_sample
from factory.data.labels import id_to_trainid


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
    args.evalInstLevelScore = False  # uses np.in1d, removed in numpy 2.4
    args.evalPixelAccuracy = False
    result = ev.evaluateImgLists(list(gts), list(gts), args)
    assert result["averageScoreClasses"] == pytest.approx(1.0)
    present = {name: v for name, v in result["classScores"].items() if not np.isnan(v)}
    assert "road" in present and len(present) >= 4
    assert all(v == pytest.approx(1.0) for v in present.values())


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
