"""The neural-layout path end to end on the procedural city, with tiny models:
reference -> PCA layout (factory.layout via factory.conditions) -> Synthesizer -> quality/retries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from factory.config import from_dict
from factory.data.cityscapes import list_cityscapes, load_sample
from factory.layout import LayoutConfig, SDUNetBackbone, fit_layout_pca
from factory.models import load_components
from factory.quality import QualityConfig, synthesize_with_retries
from factory.synth import SynthConfig, Synthesizer, VariantsConfig, WorkItem

PROMPTS = Path(__file__).resolve().parents[2] / "configs" / "prompts" / "weather.yaml"


def test_layout_conditioned_variants_with_quality_gate(city_root, tmp_path):
    components = load_components("tiny")
    refs = list_cityscapes(city_root / "cityscapes", "train").refs[:2]
    samples = [load_sample(r) for r in refs]
    layout_cfg = LayoutConfig(n_components=6, pca_samples=300, micro_batch=1, device="cpu")
    fit_layout_pca(SDUNetBackbone(components, micro_batch=1), samples, layout_cfg).save(tmp_path / "pca")

    cfg = from_dict(
        SynthConfig,
        {
            "condition": {
                "kind": "layout",
                "device": "cpu",
                "layout": {
                    "n_components": 6,
                    "micro_batch": 1,
                    "device": "cpu",
                    "pca": str(tmp_path / "pca"),
                },
            },
            "condition_channels": 6,
            "layout_components": 4,
            "steps": 2,
            "guidance_scale": 2.0,
            "batch_size": 4,
            "device": "cpu",
        },
    )
    synth = Synthesizer(cfg, components).setup()
    assert synth.condition.kind == "layout" and synth.controlnet.config.conditioning_channels == 6

    variants = VariantsConfig(prompts=PROMPTS, sets=["fog", "night"]).build()
    work = [(r, v) for r in refs for v in variants]
    condition = synth.condition([s for s in samples for _ in variants])
    assert condition.shape == (4, 6, 64, 128) and (condition < 0).any()  # pixel-resolution layouts

    res = synthesize_with_retries(synth, work, condition, job_seed=3, cfg=QualityConfig(max_attempts=2))
    assert [r.key for r in res] == [f"{r.key}__{v.name}" for r, v in work]
    for r in res:
        assert r.status == "ok" and len(r.attempts) == 1
        assert r.output.image.shape == (64, 128, 3) and r.output.image.dtype == np.uint8
        meta = json.loads(json.dumps({**r.output.meta(), "quality": r.quality.scores, **synth.signature()}))
        assert meta["condition"]["n_components"] == 6 and meta["sampler"]["layout_components"] == 4
    # Same job seed, fresh run, one by one: identical images (what resume relies on).
    again = synth([WorkItem(*work[1], res[1].output.seed)], condition[1:2])
    assert np.array_equal(again[0].image, res[1].output.image)
