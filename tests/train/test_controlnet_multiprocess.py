"""ControlNet training under ``accelerate launch`` with 2 processes on CPU (gloo), for real.

What a multi-GPU run must get right, checked on the CPU: both processes train one model and only
the main one saves it; the processes' batches are disjoint and cover each epoch (the per-rank
batch audit, factory.train.batch_audit); a run killed mid-way and rerun resumes from its last
checkpoint and ends with the weights of an uninterrupted run, its audit listing each step once.

The launch: with ``--cpu`` accelerate starts one process whatever ``--num_processes`` says (its
simple launcher; a multi-process CPU launch of its own needs mpirun), so the test uses torchrun
(``--multi_gpu``) with ``ACCELERATE_USE_CPU=1``, which makes accelerate join the processes with
gloo on the CPU (see ``check_launch`` for what happens without it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from factory.config import from_dict
from factory.train.batch_audit import (
    BatchAudit,
    audit_path,
    read_batch_audit,
    reset_for_resume,
    truncate_after,
)
from factory.train.controlnet import (
    RESULT_FILE,
    ControlNetTrainConfig,
    TrainError,
    batch_indices,
    latest_checkpoint,
    train_controlnet,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "train" / "procedural_controlnet_canny.yaml"
N_REFS, BATCH, PROCESSES, STEPS = 8, 2, 2, 6
STEPS_PER_EPOCH = N_REFS // (BATCH * PROCESSES)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_cmd(data_root: Path, out: Path) -> list[str]:
    """The 2-process CPU launch of the trainer's own CLI: tiny base model, 64x128, 6 steps."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", str(PROCESSES), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "factory.train.controlnet", "--config", str(CONFIG),
        f"out={out}", "base_model=tiny", f"data.root={data_root}", f"steps={STEPS}", f"batch_size={BATCH}",
        "checkpoint_every=2", "keep_checkpoints=2", "validation.every=-1", "threads=1",
    ]  # fmt: skip


ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "ACCELERATE_USE_CPU": "1",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "OMP_NUM_THREADS": "1",
}


def run_launch(data_root: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        launch_cmd(data_root, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and each worker's, as a lost node would.

    The launcher's group alone is not enough: torchrun starts every worker in a session of its
    own (torch.distributed.elastic's SubprocessHandler, ``start_new_session=True``), so
    ``os.killpg`` of the launcher leaves the workers training on, and writing checkpoints.
    """
    workers = psutil.Process(proc.pid).children(recursive=True)
    groups = set()
    for pid in [proc.pid, *(w.pid for w in workers)]:
        with contextlib.suppress(ProcessLookupError):  # a worker that has just exited
            groups.add(os.getpgid(pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers survived the kill: {alive}"


@pytest.fixture(scope="module")
def city8(tmp_path_factory) -> Path:
    """A procedural city with 8 training images: with batch 2 on 2 processes, an epoch is 2 steps."""
    from factory.data.procedural import generate_city

    root = tmp_path_factory.mktemp("city8")
    generate_city(root, n_train=N_REFS, n_val=0, n_acdc=0, height=64, width=128, seed=0)
    return root / "cityscapes"


@pytest.fixture(scope="module")
def uninterrupted(city8, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 2-process run of 6 steps: the reference the other tests compare with."""
    out = tmp_path_factory.mktemp("cn2") / "run"
    return out, run_launch(city8, out)


@pytest.mark.slow
def test_two_processes_train_one_controlnet_saved_once(uninterrupted):
    from diffusers import ControlNetModel

    from factory.models import content_hash

    out, done = uninterrupted
    log = done.stdout + done.stderr
    assert "2 process(es) (MULTI_CPU)" in log and f"{BATCH * PROCESSES} samples per step" in log
    assert log.count("saved the ControlNet") == 1  # the main process only
    assert sorted(read_batch_audit(out)) == [0, 1]  # both processes trained
    meta = json.loads((out / RESULT_FILE).read_text())
    assert meta["steps"] == STEPS
    assert meta["distributed"] == {
        "type": "MULTI_CPU",
        "num_processes": PROCESSES,
        "batch_size_per_process": BATCH,
        "grad_accum": 1,
        "effective_batch_size": BATCH * PROCESSES,
    }
    assert not (out / ".tmp-controlnet").exists()
    assert content_hash(ControlNetModel.from_pretrained(out)) == meta["controlnet_content_hash"]
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == list(
        range(1, STEPS + 1)
    )


@pytest.mark.slow
def test_processes_see_disjoint_batches_that_cover_each_epoch(uninterrupted, city8):
    from factory.data.datasets import DatasetConfig, list_samples

    out, _ = uninterrupted
    audit = read_batch_audit(out)
    keys = [r.key for r in list_samples(DatasetConfig(root=city8)).refs]
    assert len(keys) == N_REFS
    for rank, records in audit.items():
        assert [r["step"] for r in records] == list(range(1, STEPS + 1))
        for r in records:
            assert r["indices"] == batch_indices(N_REFS, BATCH, r["step"] - 1, rank, PROCESSES, seed=0)
            assert r["keys"] == [keys[i] for i in r["indices"]]
    for s in range(STEPS):
        assert not set(audit[0][s]["indices"]) & set(audit[1][s]["indices"]), f"step {s + 1} shared"
    for first in range(0, STEPS, STEPS_PER_EPOCH):
        epoch = [
            i for rank in (0, 1) for r in audit[rank][first : first + STEPS_PER_EPOCH] for i in r["indices"]
        ]
        assert sorted(epoch) == list(range(N_REFS)), f"epoch from step {first + 1}"


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(uninterrupted, city8, tmp_path):
    """Killed (SIGKILL, every process) after checkpoint 4, then rerun: it resumes at step 4.

    The final safetensors are byte-identical to the uninterrupted run's: the batches, noise and
    timesteps come from (seed, step), the checkpoint holds the optimiser and schedule state, and
    gloo's all-reduce of two gradients is one float addition, commutative, so neither the order
    the ranks arrive in nor DDP's bucket layout (rebuilt after the resume's first step) changes it.
    """
    reference, _ = uninterrupted
    out = tmp_path / "run"
    log_file = tmp_path / "killed.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            launch_cmd(city8, out),
            cwd=REPO,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while proc.poll() is None and time.time() < deadline:
            found = latest_checkpoint(out / "checkpoints")
            if found and found[0] >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the kill:\n" + log_file.read_text()[-3000:]
        kill_launch(proc)
    first = latest_checkpoint(out / "checkpoints")
    assert first is not None and first[0] == 4
    assert not (out / RESULT_FILE).exists()
    # a kill can land after a step was logged but before its checkpoint, even mid-line
    for path in (audit_path(out, 0), audit_path(out, 1), out / "train_log.jsonl"):
        with path.open("a") as f:
            f.write(json.dumps({"step": 5, "indices": [], "keys": [], "loss": 0.0}) + '\n{"step": 6, "ind')
    at_kill = load_file(first[1] / "model.safetensors")

    done = run_launch(city8, out)
    assert f"resuming from {first[1]} (step 4)" in done.stdout
    meta = json.loads((out / RESULT_FILE).read_text())
    assert meta["steps"] == STEPS and meta["timings"]["steps_run_this_call"] == STEPS - 4
    assert (out / WEIGHTS).read_bytes() == (reference / WEIGHTS).read_bytes()
    final = load_file(out / WEIGHTS)
    assert any(not torch.equal(at_kill[k], final[k]) for k in final), "the resumed steps changed nothing"
    # each step once, the same samples as the uninterrupted run; the loss log likewise
    assert read_batch_audit(out) == read_batch_audit(reference)
    assert (out / "train_log.jsonl").read_text() == (reference / "train_log.jsonl").read_text()


@pytest.mark.parametrize(
    ("n", "batch", "processes"),
    [(8, 2, 2), (12, 3, 2), (12, 2, 3), (7, 2, 2), (10, 4, 1), (3, 2, 2)],
)
def test_batch_indices_stream_is_epoch_after_epoch(n, batch, processes):
    """Steps x processes read consecutive positions of one stream of per-epoch permutations.

    So each epoch is every sample exactly once even when ``batch x processes`` does not divide
    ``n``; then an epoch ends mid-step and only the steps that straddle a boundary may repeat a
    sample (within a process or across two), which is certain when a step is larger than ``n``.
    """
    per_step = batch * processes
    n_steps = (3 * n) // per_step + 2  # past three epoch boundaries
    steps = [
        [batch_indices(n, batch, s, p, processes, seed=5) for p in range(processes)] for s in range(n_steps)
    ]
    stream = [i for step in steps for b in step for i in b]
    for e in range(len(stream) // n):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n)), f"epoch {e}"
    for s, step in enumerate(steps):
        used = [i for b in step for i in b]
        straddles = (s * per_step) // n != ((s + 1) * per_step - 1) // n
        if not straddles:
            assert len(set(used)) == per_step, f"step {s} repeats a sample without an epoch boundary"
        if per_step > n:
            assert len(set(used)) < per_step
    if n % per_step == 0:  # an epoch is a whole number of steps: no step straddles
        assert all(len({i for b in step for i in b}) == per_step for step in steps)


def test_launch_that_accelerate_does_not_join_is_refused(tmp_path, monkeypatch):
    """torchrun's WORLD_SIZE=2 but accelerate sees one process (no GPU, no ACCELERATE_USE_CPU)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cfg = from_dict(ControlNetTrainConfig, {"out": str(tmp_path / "out"), "data": {"root": str(tmp_path)}})
    with pytest.raises(
        TrainError, match=r"WORLD_SIZE=2 processes but accelerate runs 1.*ACCELERATE_USE_CPU=1"
    ):
        train_controlnet(cfg)
    assert not (tmp_path / "out").exists()


def test_audit_resume_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    """Lines beyond the resumed step (and a line a kill cut short) go; a fresh run (step 0) empties."""
    for rank in (0, 1, 2):  # rank 2: a former, larger launch, truncated too
        audit = BatchAudit(tmp_path, rank)
        for step in (1, 2, 3):
            audit.record(step, [rank], [f"k{rank}"])
        with audit_path(tmp_path, rank).open("a") as f:
            f.write('{"step": 4, "indi')
    reset_for_resume(tmp_path, 2)
    assert {r: [x["step"] for x in recs] for r, recs in read_batch_audit(tmp_path).items()} == {
        0: [1, 2],
        1: [1, 2],
        2: [1, 2],
    }
    assert read_batch_audit(tmp_path)[1][0] == {"step": 1, "indices": [1], "keys": ["k1"]}
    assert truncate_after(audit_path(tmp_path, 0), 0) == 0 and audit_path(tmp_path, 0).read_text() == ""
    assert truncate_after(tmp_path / "missing.jsonl", 3) == 0 and not (tmp_path / "missing.jsonl").exists()
