"""The oracle synthesizer: the renderer's weather on the reference, through the generation job."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from factory.jobs.generate import run
from factory.shards import Manifest, read_shard_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from jobcfg import make_cfg  # noqa: E402

ORACLE = "factory.synth.oracle:build"


def test_oracle_shards_are_the_renderers_weather_on_the_reference_with_its_labels(city_root, tmp_path):
    from factory.data.cityscapes import list_cityscapes, load_sample
    from factory.data.procedural import SKY_DEPTH, apply_weather
    from factory.eval.depth import reference_depth

    out = tmp_path / "oracle"
    cfg = make_cfg(city_root, out, f"synthesizer={ORACLE}", "executor=in_process", limit=2)
    summary = run(cfg)
    assert summary.counts == {"ok": 4}  # 2 references x fog, night
    samples = list(read_shard_samples(sorted((out / "shards").glob("*.tar"))))
    refs = {r.key: r for r in list_cityscapes(city_root / "cityscapes", "train").refs}
    for s in samples:
        meta = json.loads(s["json"])
        ref = load_sample(refs[meta["source_key"]])
        depth = reference_depth(ref).astype(np.float32)
        depth[depth <= 0] = SKY_DEPTH
        want = apply_weather(ref.image, depth, meta["variant"], np.random.default_rng(meta["seed"]))
        got = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))
        assert np.array_equal(got, want)
        assert not np.array_equal(got, ref.image)  # the weather is there
        assert s["labelids.png"] == refs[meta["source_key"]].paths["labelids"].read_bytes()  # reused bytes
    assert {json.loads(s["json"])["variant"] for s in samples} == {"fog", "night"}


def test_a_weather_the_renderer_does_not_know_is_a_failed_row_not_a_dead_job(city_root, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        "base_caption: a photo of a city street\nsets:\n"
        "  fog:\n    phrasings:\n      - append: in dense fog\n"
        "  sandstorm:\n    phrasings:\n      - append: in a sandstorm\n"
    )
    out = tmp_path / "oracle"
    cfg = make_cfg(
        city_root, out, f"synthesizer={ORACLE}", "executor=in_process", f"variants.prompts={prompts}",
        "variants.sets=[fog, sandstorm]", "quality.max_attempts=1", limit=1,
    )  # fmt: skip
    summary = run(cfg)
    assert summary.counts.get("ok") == 1 and sum(summary.counts.values()) == 2
    failed = [r for r in Manifest(out / "manifest").rows() if r["status"] != "ok"]
    assert len(failed) == 1 and "sandstorm" in json.dumps(failed[0])
