"""The demo's markdown report: pictures, tables, and each claim checked against the numbers.

Pure rendering: it reads the stage results (and the stage markers' timings) and returns text;
the stage runner (demo.stages) decides what runs and writes the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from downstream.benchmarks.common import claim_verdict

CONDITION_NAMES = {
    "layout": "neural layout (LUMEN)",
    "canny": "Canny edges",
    "semseg": "GT semantic map",
    "disparity": "depth (reference disparity)",
    "hed": "HED edges",
}


def interval_text(cell: dict[str, Any]) -> str:
    """``+1.2 [95% CI +0.3, +2.1], 4 paired seeds`` (or the one-seed difference)."""
    if cell.get("ci") is None:
        return f"difference {cell['diff']:+.1f}, one seed"
    lo, hi = cell["ci"]
    return f"difference {cell['diff']:+.1f} [95% CI {lo:+.1f}, {hi:+.1f}], {cell['n']} paired seeds"


def render_report(
    out: Path,
    r: dict[str, Any],
    stages: Sequence[str],
    conditions: Sequence[str],
    config: str | Path = "configs/demo.yaml",
) -> str:
    """The markdown report: pictures and tables, with the claims checked against the numbers.

    ``r``: each stage's result by stage name; ``stages``: the stage names in run order (for the
    time table); ``conditions``: the compared condition kinds, LUMEN's "layout" first;
    ``config``: the budgets file the run read (configs/demo.yaml for make demo, paper.yaml for make paper).
    """
    title = "paper" if Path(config).stem == "paper" else "demo"

    def rel(p: str | Path) -> str:
        return os.path.relpath(Path(p), out)

    dg_sum = r["dg"]["summary"]
    mixes = list(dg_sum)
    real, lumen = dg_sum.get("real", {}), dg_sum.get("real + LUMEN", {})
    card = r["generate"]["card"]
    seconds = stage_seconds(out, stages)
    lines = [
        f"# LUMEN Factory {title} report",
        "",
        "The whole pipeline in miniature on the procedural city: every number below was measured",
        f"in this run (budgets: {config}). Claims are checked against the numbers, not tuned.",
        "",
        *compare_lines(r["compare"], conditions, rel),
        *weather_lines(r["base"]),
        "## Generation (Ray job, label-reusing shards)",
        "",
        f"Accepted samples: {card['samples']['accepted']}; rejected attempts: "
        f"{card['samples'].get('rejected', 0)}; failed: {card['samples'].get('failed', 0)}. "
        f"Dataset card: {rel(Path(r['generate']['out']) / 'card.md')}.",
        "",
        f"![contact sheet]({rel(Path(r['generate']['out']) / 'contact_sheet.png')})",
        "",
        "## Domain generalisation (the paper's Table 4 layout, mIoU %)",
        "",
        "```",
        r["dg"]["table"],
        "```",
        "",
    ]
    if r["dg"].get("ratio") and not r["dg"].get("selection"):
        ratios = sorted(set(r["dg"]["ratio"].values()))
        lines += [
            f"Mix ratio fixed in advance at {', '.join(map(str, ratios))} (not chosen on any split).",
            "",
        ]
    intervals = r["dg"].get("intervals") or {}
    for mix in [m for m in intervals if m != "real"]:
        cell, cs = intervals[mix]["Avg"], intervals[mix]["CS"]
        lines.append(
            f"Claim: {mix} above real-only on the adverse-weather average - "
            f"**{claim_verdict(cell)}** ({interval_text(cell)}; clear-weather CS {interval_text(cs)})."
        )
    if real and lumen and not intervals:  # a report of a run from before the intervals
        a, b = real["Avg"]["mean"], lumen["Avg"]["mean"]
        verdict = "holds" if b > a else "does not hold"
        lines.append(
            f"Claim: real + LUMEN above real-only on the adverse-weather average - **{verdict}** "
            f"at this scale ({b:.1f} vs {a:.1f}; seeds: {real['Avg']['n']})."
        )
    lines += [
        "",
        f"![dg]({rel(Path(r['dg']['json']).with_name('dg.png'))})",
        "",
        *multitask_lines(r["multitask"], rel),
        "## Models",
        "",
        f"- base model: {r['base'].get('unet_steps_done')} U-Net steps; timings (s): {r['base'].get('timings')}",
        "- ControlNets (same budget): "
        + ", ".join(f"{kind} {r[f'controlnet_{kind}'].get('steps')} steps" for kind in conditions),
        f"- mixes evaluated: {', '.join(mixes)}",
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {name} | {sec:.0f} |" for name, sec in seconds.items()),
        f"| total | {sum(seconds.values()):.0f} |",
        "",
        "(A stage cached from an earlier run shows the time it took then.)",
        "",
    ]
    return "\n".join(lines)


def compare_lines(
    cmp: dict[str, Any], conditions: Sequence[str], rel: Callable[[str | Path], str]
) -> list[str]:
    """The conditioning comparison (the paper's Table 2 columns, factory.eval.compare) and the
    claim that the label-free neural layout aligns better than Canny edges."""
    labels = {c["key"]: c["label"] for c in cmp["columns"]}
    better = {c["key"]: c["higher_is_better"] for c in cmp["columns"]}
    rows, st = cmp["rows"], cmp["settings"]
    keys = ["miou", "pixel_acc", "si_log", "fd", "lpips", "text"]
    head = {**labels, "pixel_acc": "pixel acc"}

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    arrow = {k: (" ↑" if better.get(k, True) else " ↓") for k in keys}
    lines = [
        "## Conditioning comparison (the paper's Table 2 columns)",
        "",
        f"Every ControlNet samples the same {st['n_references']} val references with the same "
        f"{st['seeds']} seeds through the factory's Synthesizer ({st['sampler']['steps']} {st['sampler']['scheduler'].upper()} steps), "
        f"and {st['weather_refs']} of them once per weather prompt. Columns: **{labels['miou']}** of a small "
        "segmenter against the *reference's* labels (the ones the factory ships with the image); "
        f"**{labels['si_log']}** (100 x scale-invariant log error) of a small depth network against the "
        f"reference's depth from its disparity; **{labels['fd']}**, the Fréchet distance to "
        f"{st['fd_real']['n']} real {st['fd_real']['split']} images in the judge segmenter's features "
        f"(not FID); **{labels['lpips']}** between the seeds of one layout (LPIPS' formula on the judge's "
        f"features, not LPIPS); **{labels['text']}**, a weather classifier's accuracy on the prompted "
        "weather (chance 0.2; TIFA needs a language and a VQA model). The judges were trained on rendered "
        "procedural scenes. *real reference*: the real images scored as if generated (the ceilings, and "
        "the FD of real images at this count: small counts bias FD upwards); *no condition*: the base model "
        "with the ControlNet off. At this N every number is noisy (weather acc moves in steps of "
        f"{1 / max(1, st['weather_refs'] * (len(st['weathers']) + 1)):.2f}).",
        "",
        "| conditioning | "
        + " | ".join(head[k] + (arrow[k] if k != "pixel_acc" else "") for k in keys)
        + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, row in rows.items():
        label = CONDITION_NAMES.get(name, name)
        lines.append(f"| {label} | " + " | ".join(cell(row["scores"].get(k)) for k in keys) + " |")
    lay, can = rows["layout"]["scores"], rows["canny"]["scores"]
    lines += [
        "",
        f"Claim: neural-layout alignment above Canny's - **{alignment_verdict(cmp)}** "
        f"at this scale (mIoU {lay['miou']:.3f} vs {can['miou']:.3f}).",
    ]
    if "semseg" in rows:
        lines[-1] += (
            f" The GT semantic map, which needs a label for every training image, reaches "
            f"{rows['semseg']['scores']['miou']:.3f}."
        )
    lines += ["", f"![compare]({rel(cmp['plot'])})", ""]
    for kind in conditions:
        if rows.get(kind, {}).get("grid"):
            lines += [f"![{kind}]({rel(rows[kind]['grid'])})", ""]
    lines += ["Columns: reference | condition | clear sample per seed | one sample per weather prompt.", ""]
    return lines


def multitask_lines(mt: dict[str, Any], rel: Callable[[str | Path], str]) -> list[str]:
    """The multi-task table (semantics, depth, 3D boxes on the real val images by training data)
    and the claim that adding LUMEN images to the real ones improves 3D detection."""
    s = mt["summary"]
    lines = [
        "## Multi-task: do LUMEN images carry the references' depth and 3D boxes?",
        "",
        "One MiT encoder with semantic, depth and 3D-box heads, trained on each mix and evaluated",
        "on the real val images: mIoU (%), depth AbsRel and delta1 (%), and the official Cityscapes",
        "3D Detection Score (cityscapesscripts' evaluator; 2D IoU 0.5 at this resolution). The",
        "synthetic samples carry their reference's disparity and gtBbox3d unchanged.",
        "",
        "```",
        mt["table"],
        "```",
        "",
    ]
    if "ratio" in mt:
        lines += [f"Share of LUMEN draws in real + LUMEN: {mt['ratio']}, {mt['ratio_source']}.", ""]
    if "real" in s and "real + LUMEN" in s:
        d = {
            c: s["real + LUMEN"][c]["mean"] - s["real"][c]["mean"]
            for c in ("mIoU", "AbsRel", "delta1", "mDS")
        }
        a, b = s["real"]["mDS"]["mean"], s["real + LUMEN"]["mDS"]["mean"]
        cell = (mt.get("intervals") or {}).get("real + LUMEN", {}).get("mDS")
        if cell is not None:
            verdict, numbers = claim_verdict(cell), f"mDS {b:.1f} vs {a:.1f}; {interval_text(cell)}"
        else:  # a report of a run from before the intervals
            verdict, numbers = ("holds" if b > a else "does not hold"), f"mDS {b:.1f} vs {a:.1f}"
        lines += [
            f"Claim: real + LUMEN above real-only on 3D car detection (the boxes are the references' "
            f"own) - **{verdict}** ({numbers}; seeds: {s['real']['mDS']['n']}).",
            "",
            f"All differences, real + LUMEN minus real: mIoU {d['mIoU']:+.1f}, AbsRel {d['AbsRel']:+.3f} "
            f"(lower is better), delta1 {d['delta1']:+.1f}, mDS {d['mDS']:+.1f}.",
        ]
    if "LUMEN" in s and "real" in s:
        lines.append(
            f"Trained on LUMEN images alone: mDS {s['LUMEN']['mDS']['mean']:.1f}, delta1 "
            f"{s['LUMEN']['delta1']['mean']:.1f} (real only: {s['real']['mDS']['mean']:.1f}, "
            f"{s['real']['delta1']['mean']:.1f})."
        )
    lines += ["", f"![multitask]({rel(Path(mt['json']).with_name('multitask.png'))})", ""]
    pic = mt["pictures"].get("real + LUMEN")
    if pic and Path(pic).is_file():
        lines += [
            f"![predictions]({rel(pic)})",
            "",
            "Real + LUMEN network on val images: 3D boxes (ground truth white, predictions green with",
            "score) | predicted semantics | predicted depth | true depth (inverse depth, near = bright).",
            "",
        ]
    return lines


def weather_lines(base: dict[str, Any]) -> list[str]:
    """The base model's weather steering: brightness of its samples per caption vs real renders,
    and the claim that fog/snow come out brighter and night darker than clear."""
    stats = base.get("weather_stats") or {}
    if "clear" not in stats:
        return []
    lines = [
        "## Weather steering of the base model (the text side)",
        "",
        "Mean brightness (and contrast) of the base model's preview samples per caption, against",
        "the real renders of that weather (lumen_base.json).",
        "",
        "| caption | generated brightness | real | generated contrast | real |",
        "|---|---|---|---|---|",
    ]
    for weather, st in stats.items():
        g, real = st["generated"], st["real"]
        lines.append(
            f"| {weather} | {g['brightness']:.2f} | {real['brightness']:.2f} | "
            f"{g['contrast']:.2f} | {real['contrast']:.2f} |"
        )
    clear = stats["clear"]["generated"]["brightness"]
    said = ", ".join(
        f"{w} {stats[w]['generated']['brightness']:.2f}" for w in ("fog", "snow", "night") if w in stats
    )
    lines += [
        "",
        f"Claim: fog and snow brighter, night darker than clear - **{weather_verdict(base)}** "
        f"(clear {clear:.2f}; {said}).",
        "",
    ]
    return lines


def alignment_verdict(cmp: dict[str, Any]) -> str:
    """The conditioning comparison's claim: layout-conditioned samples follow the reference's
    labels better (judge mIoU) than Canny-conditioned ones."""
    rows = cmp["rows"]
    return "holds" if rows["layout"]["scores"]["miou"] > rows["canny"]["scores"]["miou"] else "does not hold"


def weather_verdict(base: dict[str, Any]) -> str:
    """The base model's weather steering: fog and snow samples brighter than clear, night darker."""
    stats = base["weather_stats"]
    clear = stats["clear"]["generated"]["brightness"]
    brighter = [stats[w]["generated"]["brightness"] > clear for w in ("fog", "snow") if w in stats]
    darker = [stats[w]["generated"]["brightness"] < clear for w in ("night",) if w in stats]
    return "holds" if all(brighter + darker) else "does not hold"


def claims(r: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every claim a report checks, by name: (verdict, the numbers it rests on). One home for
    the verdicts, so two runs' reports can be compared claim by claim (``python -m demo.verdicts``)."""
    out: dict[str, tuple[str, str]] = {}
    if r.get("compare", {}).get("rows"):
        rows = r["compare"]["rows"]
        out["layout alignment above Canny"] = (
            alignment_verdict(r["compare"]),
            f"mIoU {rows['layout']['scores']['miou']:.3f} vs {rows['canny']['scores']['miou']:.3f}",
        )
    if "clear" in (r.get("base", {}).get("weather_stats") or {}):
        out["weather steering of the base model"] = (weather_verdict(r["base"]), "")
    for mix, cells in (r.get("dg", {}).get("intervals") or {}).items():
        if mix != "real":
            out[f"DG: {mix} above real on the ACDC average"] = (
                claim_verdict(cells["Avg"]),
                interval_text(cells["Avg"]),
            )
            out[f"DG: {mix} clear weather (CS) not below real"] = (
                _not_below(cells["CS"]),
                interval_text(cells["CS"]),
            )
    mt = (r.get("multitask", {}).get("intervals") or {}).get("real + LUMEN")
    if mt:
        out["multi-task: real + LUMEN above real on mDS"] = (
            claim_verdict(mt["mDS"]),
            interval_text(mt["mDS"]),
        )
    return out


def _not_below(cell: dict[str, Any]) -> str:
    """The clear-weather target: real + synthetic is not below real-only (its interval reaches zero)."""
    if cell.get("ci") is None:
        return (
            f"{'holds' if cell['diff'] >= 0 else 'does not hold'} on one seed (no interval: run more seeds)"
        )
    return "holds" if cell["ci"][1] >= 0 else "does not hold"


def stage_seconds(out: Path, stages: Sequence[str]) -> dict[str, float]:
    """Seconds each finished stage took, from its marker (the report's own stage is still running)."""
    seconds = {}
    for name in stages:
        marker = out / "stages" / f"{name}.json"
        if marker.is_file():
            seconds[name] = float(json.loads(marker.read_text())["seconds"])
    return seconds


__all__ = [
    "CONDITION_NAMES",
    "alignment_verdict",
    "claims",
    "compare_lines",
    "multitask_lines",
    "render_report",
    "stage_seconds",
    "weather_lines",
    "weather_verdict",
]
