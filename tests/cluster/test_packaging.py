"""What can be checked of the cluster packaging without Docker, Kubernetes or a cloud account.

`docker build` cannot run here (no daemon, no GPU): these tests hold the files to the repository
instead - the Dockerfile's stages and the targets/modules it runs, both cluster YAMLs parse, and
every module, config and make target they name exists; the image the KubeRay file runs is the
tag cluster/README.md builds.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _make_calls(command: str) -> list[str]:
    """Targets of ``make`` where it runs as a command (not ``apt-get install ... make``)."""
    return re.findall(r"(?:^|&&|;|\|\|)\s*make\s+(\w[\w-]*)", command)


def _python_modules(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]


def _configs(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]


def test_dockerfile_builds_in_a_cuda_stage_and_runs_in_a_runtime_stage():
    instructions = _dockerfile()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 2
    assert "cudnn-devel" in froms[0] and froms[0].endswith("AS build")
    assert "cudnn-runtime" in froms[1]
    runs = " ".join(args for word, args in instructions if word == "RUN")
    targets = [t for word, args in instructions if word == "RUN" for t in _make_calls(args)]
    assert "setup" in targets and set(targets) <= _make_targets()
    assert any(word == "COPY" and args.startswith("--from=build /app") for word, args in instructions)
    # the smoke import at the end names importable top-level packages of this repository
    smoke = re.search(r'python -c "import ([^;"]+)', runs)
    assert smoke is not None
    for name in ("factory", "downstream"):
        assert name in smoke.group(1) and importlib.util.find_spec(name) is not None
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "outputs" in ignored  # the build context stays small


def test_kuberay_job_names_what_the_repository_has():
    job = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    for module in _python_modules(entry):
        assert importlib.util.find_spec(module) is not None, module
    for config in _configs(entry):
        assert (REPO / config).is_file(), config
    spec = job["spec"]["rayClusterSpec"]
    import ray

    assert spec["rayVersion"] == ray.__version__  # the image's Ray is the project's pin
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]
    ]
    readme = (REPO / "cluster" / "README.md").read_text()
    for c in containers:
        assert f"docker build -t {c['image']} ." in readme
        assert c["workingDir"] == "/app"  # where the Dockerfile puts the repository
    assert "WORKDIR /app" in (REPO / "Dockerfile").read_text()


def test_ray_up_config_names_what_the_repository_has():
    cfg = yaml.safe_load((REPO / "cluster" / "ray-up.yaml").read_text())
    targets = {t for command in cfg["setup_commands"] for t in _make_calls(command)}
    assert "setup" in targets and targets <= _make_targets()
    header = (REPO / "cluster" / "ray-up.yaml").read_text()
    for module in re.findall(r"python -m ([\w.]+)", header):
        assert importlib.util.find_spec(module) is not None, module
    for config in re.findall(r"--config (\S+)", header):
        assert (REPO / config).is_file(), config
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert "/.venv/" in runtime_env["excludes"] and runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_make_knows_every_target_the_cluster_readme_names():
    readme = (REPO / "cluster" / "README.md").read_text()
    names = set(re.findall(r"`make ([\w-]+)", readme))
    assert names and names <= _make_targets()
    # `make -n` resolves them without running anything
    out = subprocess.run(
        ["make", "-n", *sorted(names)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
