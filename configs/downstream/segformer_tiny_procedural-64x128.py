# Tiny SegFormer on the procedural city (`make city`), CPU friendly: 64x128 crops, 300 iterations,
# random init (no pretrained weights offline). `make train-segformer` runs this by default.
_base_ = [
    "./_base_/models/segformer_tiny.py",
    "./_base_/datasets/procedural_city.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/schedule_tiny.py",
]
crop_size = (64, 128)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
