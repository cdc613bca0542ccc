"""What the benchmarks share: per-run folders, finished runs kept, mean +- std over seeds, results.

A benchmark is many (mix, seed) trainings; an interrupted benchmark must not retrain the ones
that finished. Each run writes ``scores.json`` into its folder with the digest of its recipe
(``finished_scores``/``record_scores``): a rerun with the same recipe takes the scores from
there, a run killed mid-training resumes from its own latest checkpoint, and a changed recipe
(config contents, shards, ratio, schedule) trains again from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from factory.atomic import atomic_write_text, digest, file_digest

SCORES = "scores.json"


def run_dir(out: Path, mix: str, seed: int) -> Path:
    """The work folder of one training run: ``out/<mix>/seed<seed>`` ("real + LUMEN" -> "real+LUMEN")."""
    return out / mix.replace(" + ", "+").replace(" ", "_") / f"seed{seed}"


def recipe_digest(config: str | Path, **settings: Any) -> str:
    """What defines one run's result: the config file's bytes and the run's settings."""
    return digest({"config": file_digest(config, 64), **settings})


def finished_scores(work_dir: Path, recipe: str) -> dict[str, float] | None:
    """The scores of a run that finished with this recipe, or None. A folder of another
    recipe loses its scores and checkpoints (they must not be resumed into this one)."""
    path = work_dir / SCORES
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = {}
        if record.get("recipe") == recipe:
            print(f"{work_dir}: finished earlier with this recipe, scores reused")
            return dict(record["scores"])
    stamp = work_dir / "recipe.txt"
    if work_dir.is_dir() and (not stamp.is_file() or stamp.read_text() != recipe):
        # another recipe's run (or no stamp): its scores and checkpoints must not be resumed
        # into this one; its logs stay (mmengine's in-process loggers may still hold them)
        for stale in [SCORES, "last_checkpoint", "latest.pt", *(p.name for p in work_dir.glob("*.pth"))]:
            (work_dir / stale).unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, recipe)
    return None


def files_identity(paths: list[str] | list[Path]) -> dict[str, list[int]]:
    """(size, mtime_ns) of each file: rewritten shards change the recipe, at one stat each
    (hashing them would read the whole synthetic dataset once per run)."""
    out = {}
    for p in sorted(str(x) for x in paths):
        st = Path(p).stat()
        out[p] = [st.st_size, st.st_mtime_ns]
    return out


def has_checkpoint(work_dir: Path) -> bool:
    """A run of this recipe was interrupted after its first checkpoint (mmengine or ours)."""
    return (work_dir / "last_checkpoint").is_file() or (work_dir / "latest.pt").is_file()


def record_scores(work_dir: Path, recipe: str, scores: dict[str, float]) -> None:
    atomic_write_text(work_dir / SCORES, json.dumps({"recipe": recipe, "scores": scores}, indent=2))


def summarise(
    runs: dict[str, list[dict[str, float]]], columns: tuple[str, ...] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Per mix and column: mean and sample std (0 for a single seed) over seeds. ``columns``
    defaults to the keys of the runs' rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mix, rows in runs.items():
        out[mix] = {}
        for c in columns if columns is not None else tuple(rows[0]):
            v = np.array([r[c] for r in rows], dtype=np.float64)
            out[mix][c] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "n": len(v),
            }
    return out


def paired_intervals(
    runs: dict[str, list[dict[str, float]]], baseline: str = "real", level: float = 0.95
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per mix (other than ``baseline``) and column: the mean paired difference to the baseline
    over seeds and its ``level`` confidence interval (Student's t on the per-seed differences).

    Why paired: every mix is trained with the same seeds, so seed s of a mix and seed s of the
    baseline share their initialisation and data order; the difference removes that shared
    noise, which is most of the seed-to-seed spread. The runs' lists are in seed order (the
    benchmark runs ``--seeds`` in order for every mix). With one seed there is no interval (None).
    """
    from scipy import stats

    base = runs.get(baseline)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not base:
        return out
    for mix, rows in runs.items():
        if mix == baseline:
            continue
        if len(rows) != len(base):
            raise ValueError(f"{mix}: {len(rows)} seeds vs {len(base)} for {baseline}: not paired")
        out[mix] = {}
        for c in base[0]:
            d = np.array([r[c] - b[c] for r, b in zip(rows, base)], dtype=np.float64)
            cell: dict[str, Any] = {"diff": float(d.mean()), "n": len(d), "ci": None, "method": "paired t"}
            if len(d) >= 2:
                half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
                cell["ci"] = [cell["diff"] - half, cell["diff"] + half]
            out[mix][c] = cell
    return out


def claim_verdict(cell: dict[str, Any], *, higher_is_better: bool = True) -> str:
    """A claim "this mix beats the baseline" judged on a ``paired_intervals`` cell.

    "holds" only when the whole 95% interval is on the better side of zero, "does not hold" when
    it is on the worse side, "undecided" when it contains zero (the effect is not told from
    seed noise). With one seed (no interval) the point estimate decides and says so.
    """
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * cell["diff"]
    if cell.get("ci") is None:
        return f"{'holds' if diff > 0 else 'does not hold'} on one seed (no interval: run more seeds)"
    lo, hi = sorted(sign * x for x in cell["ci"])
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "undecided (the 95% interval contains zero)"


def format_intervals(
    intervals: dict[str, dict[str, dict[str, Any]]],
    columns: tuple[str, ...],
    baseline: str = "real",
    digits: int = 1,
) -> list[str]:
    """Table lines: each mix's paired difference to the baseline with its 95% interval."""
    if not intervals:
        return []
    width = max([len("Difference to " + baseline)] + [len(m) for m in intervals]) + 2
    n = next(iter(next(iter(intervals.values())).values()))["n"]
    lines = [f"Difference to {baseline} (mean [95% CI], paired t over {n} seeds)".ljust(width)]
    texts = {}
    for mix, cols in intervals.items():
        for c in columns:
            cell = cols[c]
            text = f"{cell['diff']:+.{digits}f}"
            if cell["ci"] is not None:
                text += f" [{cell['ci'][0]:+.{digits}f}, {cell['ci'][1]:+.{digits}f}]"
            texts[mix, c] = text
    # every cell at least two spaces from its neighbour, however many digits it has
    cell_width = max([20] + [len(t) + 2 for t in texts.values()])
    lines.append(" " * width + "".join(f"{c:>{cell_width}}" for c in columns))
    for mix in intervals:
        lines.append(mix.ljust(width) + "".join(f"{texts[mix, c]:>{cell_width}}" for c in columns))
    return lines


def format_cell(cell: dict[str, float], digits: int = 1, width: int = 14) -> str:
    """``mean +- std`` over seeds, right-aligned in ``width``; a single seed shows the mean only
    (its spread is unknown: ``+- 0.0`` would read as "no spread"; see ``single_seed_note``)."""
    text = f"{cell['mean']:.{digits}f}"
    if cell.get("n", 2) >= 2:
        text += f" +- {cell['std']:.{digits}f}"
    return f"{text:>{width}}"


def single_seed_note(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The table footer for mixes run with one seed (no spread shown), or nothing."""
    one = [mix for mix, cols in summary.items() if any(c.get("n", 2) < 2 for c in cols.values())]
    return (
        [f"(one seed: {', '.join(one)}; no spread shown - run more seeds to tell an effect from noise)"]
        if one
        else []
    )


def error_bars(cells: list[dict[str, float]]) -> list[float] | None:
    """Sample standard deviations for a bar plot's ``yerr``, or None (no bars) when a cell has a
    single seed: a zero-length bar would read as "no spread" where the spread is unknown."""
    if any(c.get("n", 1) < 2 for c in cells):
        return None
    return [c["std"] for c in cells]


def seeds_note(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """ "n = 3 seeds, bars = 1 std" or "1 seed (no error bars)" for a plot's title."""
    ns = {c.get("n", 1) for cols in summary.values() for c in cols.values()}
    if ns == {1}:
        return "1 seed (no error bars)"
    return f"n = {min(ns)}-{max(ns)} seeds" if len(ns) > 1 else f"n = {ns.pop()} seeds, bars = 1 std"


def save_result(
    out: Path, stem: str, result: dict[str, Any], plot: Callable[[dict, Path], None]
) -> dict[str, Any]:
    """``out/<stem>.json`` and the plot of ``result["summary"]`` as ``out/<stem>.png``."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(result["summary"], out / f"{stem}.png")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
    return result
