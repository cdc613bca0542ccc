# The procedural city written by `make city` (data/procedural/{cityscapes,acdc}, 128x256):
# same datasets and pipelines as Cityscapes, at a scale a CPU trains in minutes.
_base_ = ["./cityscapes_1024x1024.py"]
data_root = "{{$CITY_ROOT:data/procedural}}/cityscapes"
acdc_root = "{{$CITY_ROOT:data/procedural}}/acdc"
crop_size = (64, 128)
test_scale = (256, 128)
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
    dict(type="RandomResize", scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
test_pipeline = [
    dict(type="LoadLumenImage"),
    dict(type="Resize", scale=test_scale, keep_ratio=True),
    dict(type="LoadLumenLabels"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
acdc_val = dict(data_root=acdc_root)
