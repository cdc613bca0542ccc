# SegFormer MiT-B0 on Cityscapes, 1024x1024 crops, 160k iterations, 8 GPUs x 1 image.
# Pretrained MiT weights: mmseg's mit_b0_20220624-7e0fe6dd.pth, placed under $MIT_PRETRAINED_DIR
# (default ./pretrained) or set with --cfg-options model.backbone.init_cfg.checkpoint=<path>.
_base_ = [
    "./_base_/models/segformer_mit-b0.py",
    "./_base_/datasets/cityscapes_1024x1024.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/schedule_160k.py",
]
crop_size = (1024, 1024)
data_preprocessor = dict(size=crop_size)
checkpoint = "{{$MIT_PRETRAINED_DIR:pretrained}}/mit_b0_20220624-7e0fe6dd.pth"
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint=checkpoint)),
    test_cfg=dict(mode="slide", crop_size=(1024, 1024), stride=(768, 768)),
)
train_dataloader = dict(batch_size=1, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader
