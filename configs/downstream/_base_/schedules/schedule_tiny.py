# A few hundred iterations for the tiny model on the procedural city (CPU: ~0.1 s/iter).
_base_ = ["./schedule_160k.py"]
max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=0.002))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=1),
)
