# Runtime shared by every downstream config (mmseg style). Our datasets, sampler, transforms
# and the consumed-samples hook are registered by importing downstream.segformer.register.
custom_imports = dict(imports=["downstream.segformer.register"], allow_failed_imports=False)
default_scope = "mmseg"
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
# Logs (and saves to work_dir/consumed_sources.json) how many samples came from each source, and
# lists the training samples skipped as bad (work_dir/bad_samples.jsonl).
custom_hooks = [dict(type="SourceCountHook", interval=50), dict(type="SkippedSampleHook")]
