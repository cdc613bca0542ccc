"""README's "Commands, stage by stage" table, run in order as written: the procedural chain.

Each row's command runs in a fresh directory (``configs/`` and ``models/`` linked from the
repository, everything else made by the rows above it), with only small budget overrides
appended (``SMALL``). After each row the outputs the next rows read are checked. A second test
checks that every row's ``make`` invocation runs exactly that row's command (``make -n``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Budgets only: tiny counts and step numbers. Keyed by the table's step column.
SMALL = {
    "1": "--n-train 8 --n-val 4 --n-acdc 2",
    "2": "layout.pca_samples=2000 progress=false",
    "3": "--n 2",
    "4": "steps=2 checkpoint_every=2 validation.every=2 validation.steps=2 validation.num_references=1",
    "4b": "steps=2 checkpoint_every=2 validation.every=2 validation.steps=2 validation.num_references=1",
    "5": "steps=4 n_scenes=8",
    "6": "--n 2 --seeds 2 --weather-refs 1 --steps 2 --fd-real 4",
    "7": "dataset.limit=2 synth.steps=2 progress=false",
    "8": "--max-iters 4",
    "9": "iters=4",
    "10": "--seeds 0 --max-iters 4",
    "11": "--seeds 0 iters=4",
}


def chain_rows() -> list[tuple[str, str, str]]:
    """(step, make invocation, command) of every row between the chain markers."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- chain:start -->(.*?)<!-- chain:end -->", text, re.S)
    assert block, "README.md lost its chain table markers"
    rows = []
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"\d+b?", cells[0]):
            continue
        make, command = (re.fullmatch(r"`(.*)`", c) for c in cells[2:])
        assert make and command, f"README chain row {cells[0]}: make and command must be `code`"
        rows.append((cells[0], make.group(1), command.group(1)))
    return rows


def commands(command: str) -> list[list[str]]:
    """A row's command: one or more ``&&``-joined argument lists."""
    return [shlex.split(part) for part in command.split("&&")]


def test_the_table_is_the_chain_in_order():
    steps = [step for step, _, _ in chain_rows()]
    assert steps == list(SMALL), "update SMALL when the README chain changes"


def test_every_make_target_runs_its_rows_command():
    for step, make, command in chain_rows():
        # Under `make test` the outer make's MAKELEVEL/MAKEFLAGS would make this one a sub-make
        # that prints "Entering directory" lines; the dry run must see what a user's shell sees.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", *shlex.split(make)[1:], "VENV=.venv", "ARGS="],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        ran = [shlex.split(line) for line in dry.stdout.splitlines() if line.strip()]
        ran = [["python", *argv[1:]] if argv[0] == ".venv/bin/python" else argv for argv in ran]
        assert ran == commands(command), f"step {step}: `{make}` runs {ran}, README says {command}"


def _run(step: str, command: str, cwd: Path, env: dict[str, str]) -> None:
    for argv in commands(command):
        assert argv[0] == "python", argv
        full = [sys.executable, *argv[1:], *shlex.split(SMALL[step])]
        run = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"step {step}: {shlex.join(argv)}\n{(run.stdout + run.stderr)[-4000:]}"


@pytest.mark.slow
def test_readme_chain_runs_in_order_as_written(tmp_path):
    for name in ("configs", "models"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CITY_ROOT", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", TQDM_DISABLE="1")
    out = tmp_path / "outputs"
    expected = {  # what each step leaves for the steps after it
        "1": [tmp_path / "data/procedural/cityscapes/leftImg8bit/train", tmp_path / "data/procedural/acdc"],
        "2": [out / "layouts/procedural/pca.safetensors", out / "layouts/procedural/shards"],
        "3": [out / "contact_sheet/layouts.png"],
        "4": [out / "controlnet/procedural_layout/lumen_training.json"],
        "4b": [out / "controlnet/procedural_canny/lumen_training.json"],
        "5": [out / f"judges/{j}.safetensors" for j in ("segmenter", "depth", "weather")],
        "6": [out / "compare/compare.json"],
        "7": [out / "generate/procedural/card.json"],
        "8": [out / "segformer/segformer_tiny_procedural-64x128_synth/scores.json"],
        "9": [out / "multitask/procedural"],
        "10": [out / "benchmarks/dg/dg.json"],
        "11": [out / "benchmarks/multitask/multitask.json"],
    }
    for step, _, command in chain_rows():
        _run(step, command, tmp_path, env)
        missing = [str(p) for p in expected[step] if not p.exists()]
        assert not missing, f"step {step} did not write {missing}"

    # the chain is wired through, not merely runnable: the ControlNet read the stored layouts
    # and recorded absolute paths; generation used that ControlNet's recipe and layouts
    recipe = json.loads((out / "controlnet/procedural_layout/lumen_training.json").read_text())
    layout = recipe["config"]["condition"]["layout"]
    assert Path(layout["pca"]) == out / "layouts/procedural/pca" and Path(layout["pca"]).is_absolute()
    assert recipe["layouts"]["read"] > 0 and recipe["layouts"].get("computed", 0) == 0
    assert recipe["base_model"]["ref"] == str(REPO / "models/procedural-base-v1")
    card = json.loads((out / "generate/procedural/card.json").read_text())
    assert card["samples"]["accepted"] == 2 * 4  # two references x fog, rain, snow, night
    synth = card["config"]["synth"]
    assert synth["controlnet"] == "outputs/controlnet/procedural_layout"
    assert Path(synth["condition"]["layout"]["store"]) == out / "layouts/procedural"  # from the recipe
    rows = json.loads((out / "compare/compare.json").read_text())["rows"]
    assert {"layout", "canny"} <= set(rows)
