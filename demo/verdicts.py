"""Compare the claims of two or more finished demo / paper runs, claim by claim.

    python -m demo.verdicts outputs/paper outputs/paper-city1 [...]

Reads each run's stage results (``<out>/stages/*.json``) and prints one markdown table: every
claim its report checks (``demo.report.claims``), each run's verdict with the numbers behind it,
and whether the verdicts agree. It is how "the same verdicts on another city seed / another
machine / another thread setting" is checked (docs/demo.md), rather than by reading reports.
Exit status 1 when a verdict differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from demo.report import claims


def load_results(out: Path) -> dict[str, Any]:
    """A run's stage results by stage name, from its markers."""
    folder = out / "stages"
    if not folder.is_dir():
        raise SystemExit(
            f"{out}: no stages/ folder (fix: pass the --out folder of a finished demo or paper run)"
        )
    return {p.stem: json.loads(p.read_text())["result"] for p in sorted(folder.glob("*.json"))}


def table(runs: dict[str, dict[str, tuple[str, str]]]) -> tuple[list[str], bool]:
    """Markdown lines comparing the runs' claims, and whether every verdict agrees."""
    names = list(runs)
    order = list(dict.fromkeys(c for r in runs.values() for c in r))
    lines = ["| claim | " + " | ".join(names) + " | same verdict |", "|---|" + "---|" * (len(names) + 1)]
    same_all = True
    for claim in order:
        got = [runs[n].get(claim) for n in names]
        verdicts = {g[0].split(" (")[0] if g else "missing" for g in got}
        same = len(verdicts) == 1
        same_all &= same
        cells = [f"{g[0]} ({g[1]})" if g and g[1] else (g[0] if g else "missing") for g in got]
        lines.append(f"| {claim} | " + " | ".join(cells) + f" | {'yes' if same else '**no**'} |")
    return lines, same_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.verdicts", description=__doc__.split("\n\n")[0])
    p.add_argument("outs", nargs="+", type=Path, help="the --out folders of finished runs")
    a = p.parse_args(argv)
    lines, same = table({str(out): claims(load_results(out)) for out in a.outs})
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
