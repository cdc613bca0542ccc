"""``--cfg-options`` keys are checked against the loaded config (downstream.segformer.cfg_options):
an unknown key is refused naming the closest one; the new keys mmengine's conventions make are
allowed, and checked against the constructor that takes them where it lists its arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import ConfigError

CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "downstream" / "segformer_tiny_procedural-64x128.py"
)


@pytest.fixture(scope="module")
def cfg():
    from mmengine.config import Config

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CITY_ROOT", raising=False)  # the config's own default roots
        return Config.fromfile(str(CONFIG))


@pytest.mark.parametrize(
    "key",
    [
        "train_dataloader.batch_size",  # exists
        "train_pipeline.0.type",  # a list item, by index
        "launcher",  # a top-level key the Runner reads
        "auto_scale_lr.base_batch_size",  # ... and keys under it
        "model.backbone.with_cp",  # an argument of the type's constructor (mmengine's own example)
        "model.decode_head.num_clases",  # a **kwargs constructor: its base class checks it when built
        "randomness.deterministic",  # an argument of Runner.set_randomness
        "default_hooks.early_stop.type",  # default_hooks: hook names are the user's
    ],
)
def test_allowed_keys(cfg, key):
    from downstream.segformer.cfg_options import check_cfg_options

    check_cfg_options(cfg, {key: 1})


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("foo.bar", "unknown key foo.bar: the config has no key foo (check the spelling)"),
        ("trian_dataloader.batch_size", "did you mean train_dataloader?"),
        (
            "train_cfg.max_iter",
            "train_cfg (IterBasedTrainLoop) has no key max_iter (did you mean train_cfg.max_iters?)",
        ),
        ("optim_wrapper.optimizer.lrr", "(AdamW) has no key lrr (did you mean optim_wrapper.optimizer.lr?)"),
        ("randomness.determinstic", "did you mean randomness.deterministic?"),
        ("env_cfg.cudnn_benchmrk", "did you mean env_cfg.cudnn_benchmark?"),  # read with .get: must exist
        ("train_pipeline.9.type", "train_pipeline has 7 items"),
        ("data_root.x", "data_root is 'data/procedural/cityscapes' in the config, not a dict"),
    ],
)
def test_refused_keys_are_named(cfg, key, needle):
    from downstream.segformer.cfg_options import check_cfg_options

    with pytest.raises(ConfigError) as e:
        check_cfg_options(cfg, {key: 1}, "tiny.py")
    assert str(e.value).startswith("tiny.py: --cfg-options ") and needle in str(e.value)
