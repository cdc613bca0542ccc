# Cityscapes (official folders; labelIds converted to trainIds while loading) and ACDC val.
# The 1024x1024-crop recipe of mmseg's configs/_base_/datasets/cityscapes_1024x1024.py.
dataset_type = "CityscapesLabelIdsDataset"
data_root = "{{$CITYSCAPES_DATASET:data/cityscapes}}"
acdc_root = "{{$ACDC_DATASET:data/acdc}}"
acdc_weathers = ["fog", "night", "rain", "snow"]
crop_size = (1024, 1024)
test_scale = (2048, 1024)
meta_keys = (
    "img_path",
    "seg_map_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "reduce_zero_label",
    "key",
    "dataset",
    "weather",
    "source",
)
train_pipeline = [
    dict(type="LoadLumenImage"),
    dict(type="LoadLumenLabels"),
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
test_pipeline = [
    dict(type="LoadLumenImage"),
    dict(type="Resize", scale=test_scale, keep_ratio=True),
    # labels after Resize: evaluation is at the original resolution
    dict(type="LoadLumenLabels"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split="val", pipeline=test_pipeline, test_mode=True),
)
test_dataloader = val_dataloader
# Evaluation sets of the domain-generalisation benchmark (downstream/benchmarks/dg.py).
acdc_val = dict(data_root=acdc_root, weathers=acdc_weathers, split="val")
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
