"""The generation job's report: the dataset card (markdown + JSON) and a contact sheet.

Both are written into the job's output store (factory.storage: a local folder or an object
store) in one atomic write each.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from factory.config import to_dict
from factory.data.sample import DataError, SampleRef
from factory.jobs.generate.config import GenerateConfig
from factory.shards import Manifest
from factory.storage import Store, redact
from factory.synth.variants import Variant, synthetic_key


def previous_accounting(out: Store) -> dict[str, Any] | None:
    """The compute accounting an earlier run of this folder recorded in its card (a run that
    finds every shard done starts no worker and keeps it)."""
    if out.size("card.json") is None:
        return None
    try:
        return json.loads(out.read_bytes("card.json")).get("accounting")
    except json.JSONDecodeError:
        return None


def write_card(
    out: Store,
    cfg: GenerateConfig,
    variants: Sequence[Variant],
    manifest: Manifest,
    accounting: dict[str, Any],
) -> dict[str, Any]:
    """Dataset card: counts per variant, rejections and reasons, compute per accepted sample."""
    rows = manifest.rows()
    final: dict[str, dict] = {}
    for r in rows:  # the last attempt of a key is its final status
        if r["key"] not in final or r["attempt"] >= final[r["key"]]["attempt"]:
            final[r["key"]] = r
    per_variant: dict[str, Counter[str]] = defaultdict(Counter)
    for r in final.values():
        per_variant[r["variant"]][r["status"]] += 1
    reasons = Counter(r["reason"] for r in rows if r["status"] != "ok")
    accepted = sum(c["ok"] for c in per_variant.values())
    synth_s = sum(r["timings"].get("synth_s", 0.0) for r in rows)
    resource = accounting.get("num_gpus") or accounting.get("num_cpus") or 1.0
    device = "GPU" if accounting.get("kind") == "gpu" else "CPU"
    per_sample = synth_s * resource / accepted if accepted else None
    config = to_dict(cfg)
    config["storage_options"] = redact(cfg.storage_options)  # credentials never go in a card
    config["dataset"]["storage_options"] = redact(cfg.dataset.storage_options)
    card = {
        "out": out.location,
        "samples": {"accepted": accepted, "final": len(final), "attempts": len(rows)},
        "per_variant": {v.name: dict(per_variant.get(v.name, {})) for v in variants},
        "not_accepted_reasons": dict(reasons.most_common()),
        f"{device.lower()}_seconds_per_accepted_sample": per_sample,
        "accounting": accounting,
        "variants": [
            {"name": v.name, "prompt": v.prompt, "negative_prompt": v.negative_prompt} for v in variants
        ],
        "config": config,
    }
    out.put_bytes("card.json", json.dumps(card, indent=1, sort_keys=True, default=str).encode())
    lines = [
        "# Synthetic dataset card",
        "",
        f"Output: `{out.location}`  ",
        f"Accepted samples: {accepted} of {len(final)} (attempts: {len(rows)})  ",
        f"{device}-seconds per accepted sample: "
        + (f"{per_sample:.3f}" if per_sample is not None else "n/a"),
        "",
        "| variant | prompt | ok | rejected | failed |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        c = per_variant.get(v.name, Counter())
        lines.append(f"| {v.name} | {v.prompt} | {c['ok']} | {c['rejected']} | {c['failed']} |")
    lines += ["", "## Not accepted: reasons", ""]
    lines += [f"- {n} x {reason}" for reason, n in reasons.most_common()] or ["- none"]
    out.put_bytes("card.md", ("\n".join(lines) + "\n").encode())
    return card


def write_contact_sheet(
    out: Store,
    refs: Sequence[SampleRef],
    variants: Sequence[Variant],
    previews: dict[str, np.ndarray],
    manifest: Manifest,
    storage_options: dict[str, Any] | None = None,
) -> str | None:
    """reference | condition | variant 1 | ... per row, with column headers.

    Only the shards that hold the pictured samples are read (the manifest says which), so the
    driver's cost does not grow with the dataset.
    """
    import cv2

    from factory.data.members import IMAGE_SUFFIXES, read_shard_samples
    from factory.data.tree import fetch
    from factory.viz import grid_png

    if not refs:
        return None
    wanted = {synthetic_key(r.key, v.name) for r in refs for v in variants}
    shards = sorted({r["shard"] for r in manifest.rows() if r["key"] in wanted and r["status"] == "ok"})
    found: dict[str, np.ndarray] = {}
    paths = [out.where(f"shards/{s}.tar") for s in shards if out.size(f"shards/{s}.tar") is not None]
    for s in read_shard_samples(paths, storage_options=out.options):
        if s["__key__"] in wanted:
            ext = next(e for e in IMAGE_SUFFIXES if e in s)
            bgr = cv2.imdecode(np.frombuffer(s[ext], np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(
                    f"{s['__url__']}:{s['__key__']}.{ext}", "image does not decode", "regenerate the shard"
                )
            found[s["__key__"]] = bgr[:, :, ::-1]
    rows = []
    for ref in refs:
        fetch(ref, storage_options)  # a URI dataset: the pictured references into the driver's cache
        ref_img = cv2.imread(str(ref.paths["image"]), cv2.IMREAD_COLOR)
        h, w = ref_img.shape[:2] if ref_img is not None else (64, 128)
        panels = [ref_img[:, :, ::-1] if ref_img is not None else np.zeros((h, w, 3), np.uint8)]
        layout = previews.get(ref.key)
        panels.append(layout if layout is not None else np.full((h, w, 3), 128, np.uint8))
        for v in variants:
            img = found.get(synthetic_key(ref.key, v.name))
            panels.append(img if img is not None else np.zeros((h, w, 3), np.uint8))
        rows.append(
            [cv2.resize(np.ascontiguousarray(p), (w, h), interpolation=cv2.INTER_AREA) for p in panels]
        )
    headers = ["reference", "condition", *(v.name for v in variants)]
    out.put_bytes("contact_sheet.png", grid_png(rows, col_labels=headers))
    return out.where("contact_sheet.png")


__all__ = ["previous_accounting", "write_card", "write_contact_sheet"]
