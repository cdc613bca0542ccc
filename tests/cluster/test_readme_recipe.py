"""README's `ray job submit` recipe, run as written against `make cluster-up`.

The block between ``<!-- ray-recipe:start -->`` and ``<!-- ray-recipe:end -->`` is run by bash
in a copy of the repository (the files git tracks or would track: what a user's checkout has),
whose ``data/procedural`` is the test city. Only two things are added: the Makefile variables
that give the head free ports and a short temp dir (Make reads them from the environment), and
small overrides appended to the submit command (two references, two weathers, the test-double
synthesizer instead of a trained ControlNet). Then the same submission with a relative ``out=``
must fail in the job with the error that names the uploaded copy and the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.shards import Manifest, read_shard_samples

sys.path.insert(0, str(Path(__file__).parent))
from heads import REPO, VENV, free_port, head_env, port_flags, short_temp_dir  # noqa: E402

SMALL = "dataset.limit=2 'variants.sets=[fog, night]' samples_per_shard=2 ray.num_actors=1 synthesizer=tests/jobs/doubles.py:build progress=false"


def readme_recipe() -> list[str]:
    """The recipe's shell lines (fence and indentation removed, continuations joined)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- ray-recipe:start -->\s*```bash\n(.*?)```\s*<!-- ray-recipe:end -->", text, re.S)
    assert block, "README.md lost its ray-recipe block"
    joined = re.sub(r"\\\n\s*", "", block.group(1))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def copy_checkout(dest: Path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_recipe_lines_are_the_documented_ones():
    lines = readme_recipe()
    assert lines[0].startswith("make cluster-up") and lines[-1] == "make cluster-down"
    assert any(line.startswith("source outputs/cluster/env.sh") for line in lines)
    submit = next(line for line in lines if line.startswith("ray job submit"))
    # every path the job reads or writes is absolute: the job runs in Ray's temporary copy
    for field in ("out", "dataset.root", "synth.controlnet"):
        assert f" {field}=$PWD/" in submit, field


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_readme_ray_job_submit_recipe_runs_as_written(city_root, tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make and git are needed")
    repo = copy_checkout(tmp_path / "checkout")
    (repo / "data").mkdir()
    (repo / "data" / "procedural").symlink_to(city_root, target_is_directory=True)
    temp_dir = short_temp_dir("lr-readme-")
    env = head_env(repo / "outputs" / "cluster" / "auth_token")
    env.update(
        VENV=str(VENV),
        RAY_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        RAY_TEMP_DIR=str(temp_dir),
        RAY_NUM_CPUS="2",
        RAY_START_ARGS=" ".join(port_flags()),
        PATH=os.environ["PATH"],  # the recipe's env.sh puts the venv's `ray` first
    )
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k)  # the recipe's env.sh sets them
    lines = readme_recipe()
    submit = next(i for i, line in enumerate(lines) if line.startswith("ray job submit"))
    script = [*lines[:submit], f"{lines[submit]} {SMALL}"]
    # the same job with a relative output: refused in the job, naming the uploaded copy
    relative = re.sub(r"out=\$PWD/\S+", "out=outputs/relative", lines[submit])
    # (its log lies outside the checkout: a file growing in the working dir while Ray zips it
    # makes a package that fails to unpack)
    refused_log = tmp_path / "relative.log"
    script.append(
        f"if {relative} {SMALL} > {refused_log} 2>&1; then echo 'relative out accepted'; exit 1; fi"
    )
    down = "make cluster-down"
    try:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
            cwd=repo, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-5000:]
        out = repo / "outputs" / "generate" / "procedural"
        shards = sorted((out / "shards").glob("*.tar"))
        assert len(shards) == 2
        assert len(list(read_shard_samples(shards))) == 4
        assert {r["status"] for r in Manifest(out / "manifest").rows()} == {"ok"}
        assert json.loads((out / "card.json").read_text())["samples"]["accepted"] == 4
        refused = refused_log.read_text()
        assert "out=outputs/relative is relative" in refused, refused[-3000:]
        assert "working_dir_files" in refused and "=$PWD/" in refused
        assert not (repo / "outputs" / "relative").exists()
        down_run = subprocess.run(["bash", "-c", down], cwd=repo, env=env, capture_output=True, text=True)
        assert down_run.returncode == 0, down_run.stdout + down_run.stderr
        assert lines[-1] == down
    finally:
        subprocess.run(["make", "cluster-down"], cwd=repo, env=env, capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
