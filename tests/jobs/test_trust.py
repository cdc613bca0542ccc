"""Issue 13, the generation job as an adversary and a careless user would drive it.

Every case goes through the real job (``factory.jobs.generate.run``) with the test-double
synthesizer (tests/jobs/doubles.py), in-process unless the case is about Ray: bad labels ship as
failed rows naming the file, resume verifies what it finds, the fingerprint knows contents, one
job per output folder, and setup errors stop the job before any work or Ray.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.config import ConfigError
from factory.jobs.generate import run
from factory.jobs.lock import LOCK_NAME, OutputLock, OutputLocked
from factory.shards import Manifest, read_shard_samples

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from jobcfg import DOUBLE, REPO, make_cfg, overrides, shard_bytes  # noqa: E402

IN_PROCESS = "executor=in_process"


def final_rows(out: Path) -> dict[str, dict]:
    final: dict[str, dict] = {}
    for r in Manifest(out / "manifest").rows():
        final[r["key"]] = r  # attempts are in order within a shard
    return final


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height and that holds no pixel data (a decompression bomb
    as far as a reader that trusts the header is concerned)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def baseline(city_root, tmp_path_factory):
    """One uninterrupted in-process run: what every resume case must end byte-identical to."""
    out = tmp_path_factory.mktemp("trust-baseline")
    summary = run(make_cfg(city_root, out, IN_PROCESS))
    assert summary.counts == {"ok": 6}
    return out


# ---------------------------------------------------------------------------------- bad labels
def test_every_copied_label_is_checked_and_bad_ones_are_failed_rows_naming_the_file(city_root, tmp_path):
    city = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", city / "cityscapes")
    images = sorted((city / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))
    gt_dir = city / "cityscapes" / "gtFine" / "train"

    def gt(img: Path, suffix: str) -> Path:
        return gt_dir / img.parent.name / img.name.replace("_leftImg8bit.png", f"_gtFine_{suffix}.png")

    keys = [p.name.removesuffix("_leftImg8bit.png") for p in images]
    damage = {}
    # 0: a truncated labelIds PNG
    path = gt(images[0], "labelIds")
    path.write_bytes(path.read_bytes()[:200])
    damage[keys[0]] = (path.name, "truncated")
    # 1: labelIds containing 250 (not a Cityscapes id)
    path = gt(images[1], "labelIds")
    arr = np.asarray(Image.open(path)).copy()
    arr[0, :10] = 250
    path.write_bytes(png_bytes(arr))
    damage[keys[1]] = (path.name, "250")
    # 2: a label of the wrong size
    path = gt(images[2], "labelIds")
    path.write_bytes(png_bytes(np.asarray(Image.open(path))[:32]))
    damage[keys[2]] = (path.name, "32x128")
    # 3: a truncated instanceIds PNG
    path = gt(images[3], "instanceIds")
    path.write_bytes(path.read_bytes()[:300])
    damage[keys[3]] = (path.name, "truncated")
    # 4: a header claiming 40000x40000 pixels (a decompression bomb)
    path = gt(images[4], "labelIds")
    path.write_bytes(png_header_only(40000, 40000))
    damage[keys[4]] = (path.name, "too large")
    # two stems that cannot be keys: a space and a dot (their files are otherwise fine)
    unsafe = []
    for stem in ("bad name_000000_000019", "bad.name_000000_000019"):
        img = images[5].with_name(f"{stem}_leftImg8bit.png")
        shutil.copy(images[5], img)
        for suffix in ("labelIds", "instanceIds"):
            shutil.copy(gt(images[5], suffix), gt(img, suffix))
        unsafe.append(img.name)

    out = tmp_path / "out"
    summary = run(make_cfg(city, out, IN_PROCESS, "dataset.limit=0"))

    final = final_rows(out)
    for key, (file_name, what) in damage.items():
        for variant in ("fog", "night"):
            row = final[f"{key}__{variant}"]
            assert row["status"] == "failed", row
            assert file_name in row["reason"] and what in row["reason"], row["reason"]
    unsafe_rows = [r for k, r in final.items() if "unsafe" in k]
    assert len(unsafe_rows) == 4 and all(r["status"] == "failed" for r in unsafe_rows)
    assert {n for r in unsafe_rows for n in unsafe if n in r["reason"]} == set(unsafe)
    assert all("rename" in r["reason"] for r in unsafe_rows)
    # the one good reference still ships, with its labels
    good = [f"{keys[5]}__fog", f"{keys[5]}__night"]
    assert summary.counts == {"failed": 14, "ok": 2}
    shipped = list(read_shard_samples(sorted((out / "shards").glob("*.tar"))))
    assert sorted(s["__key__"] for s in shipped) == good
    assert all(s["labelids.png"] == gt(images[5], "labelIds").read_bytes() for s in shipped)


# ---------------------------------------------------------------------------------- resume verifies
def _truncate_at_member_boundary(tar_path: Path, keep_members: int) -> None:
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    end = members[keep_members].offset  # header of the first member dropped
    tar_path.write_bytes(tar_path.read_bytes()[:end])


def _flip_member_byte(tar_path: Path) -> None:
    with tarfile.open(tar_path) as tar:
        member = tar.getmembers()[0]
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data + 5] ^= 0xFF
    tar_path.write_bytes(bytes(data))


DAMAGE = {
    "corrupt part": lambda out: (out / "manifest" / "shard-000001.parquet").write_bytes(b"PAR1 garbage"),
    "empty part": lambda out: (out / "manifest" / "shard-000001.parquet").write_bytes(b""),
    "tar cut at a member boundary": lambda out: _truncate_at_member_boundary(
        out / "shards" / "shard-000001.tar", 4
    ),
    "tar cut inside a member": lambda out: (out / "shards" / "shard-000001.tar").write_bytes(
        (out / "shards" / "shard-000001.tar").read_bytes()[:3000]
    ),
    "member bytes changed": lambda out: _flip_member_byte(out / "shards" / "shard-000001.tar"),
    "another shard's tar": lambda out: shutil.copy(
        out / "shards" / "shard-000000.tar", out / "shards" / "shard-000001.tar"
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_verifies_each_shard_and_redoes_what_does_not_check_out(baseline, city_root, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    DAMAGE[damage](out)
    summary = run(make_cfg(city_root, out, IN_PROCESS))
    assert list(summary.shards_redone) == ["shard-000001"], summary.shards_redone
    assert summary.shards_done == ["shard-000001"] and summary.shards_skipped == 2
    assert shard_bytes(out) == shard_bytes(baseline)
    rows = Manifest(out / "manifest").rows()
    assert Counter(r["key"] for r in rows) == Counter(
        r["key"] for r in Manifest(baseline / "manifest").rows()
    )
    # and the folder is now complete: a third run has nothing to redo
    again = run(make_cfg(city_root, out, IN_PROCESS))
    assert again.shards_redone == {} and again.shards_skipped == 3


def test_members_only_resume_check_catches_a_cut_tar_without_reading_the_data(baseline, city_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    _truncate_at_member_boundary(out / "shards" / "shard-000002.tar", 2)
    summary = run(make_cfg(city_root, out, IN_PROCESS, "resume_check=members"))
    assert "members" in summary.shards_redone["shard-000002"]
    assert shard_bytes(out) == shard_bytes(baseline)


def test_size_resume_check_reads_footers_and_one_listing_and_still_catches_cut_or_foreign_shards(
    baseline, city_root, tmp_path
):
    """resume_check=size (folders of tens of thousands of shards): no tar and no part row is
    read, yet a cut tar, a part of other keys and an old part without the footer are redone."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    finished = run(make_cfg(city_root, out, IN_PROCESS, "resume_check=size"))
    assert finished.shards_redone == {} and finished.shards_skipped == 3
    manifest = out / "manifest"
    _truncate_at_member_boundary(out / "shards" / "shard-000002.tar", 2)  # a valid, shorter tar
    shutil.copy(manifest / "shard-000000.parquet", manifest / "shard-000001.parquet")  # another shard's part
    old = pq.read_table(manifest / "shard-000000.parquet")
    pq.write_table(old.replace_schema_metadata(None), manifest / "shard-000000.parquet")  # no footer
    _truncate_at_member_boundary(out / "shards" / "shard-000000.tar", 1)
    summary = run(make_cfg(city_root, out, IN_PROCESS, "resume_check=size"))
    assert "bytes, its manifest part records" in summary.shards_redone["shard-000002"]
    assert "records other keys than the 2 planned" in summary.shards_redone["shard-000001"]
    assert "members" in summary.shards_redone["shard-000000"]  # fell back to the member check
    assert shard_bytes(out) == shard_bytes(baseline)
    assert Manifest(out / "manifest").read_footer("shard-000001") == Manifest(
        baseline / "manifest"
    ).read_footer("shard-000001")


# ---------------------------------------------------------------------------------- fingerprint
def test_another_dataset_with_the_same_keys_is_refused(baseline, city_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    city = tmp_path / "city"
    shutil.copytree(city_root / "cityscapes", city / "cityscapes")  # same keys, same files...
    run(make_cfg(city, out, IN_PROCESS))  # ...copied with their mtimes: the same input, resumes
    image = sorted((city / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[0]
    arr = np.asarray(Image.open(image)).copy()
    arr[0, 0] ^= 1  # ...one pixel different: another dataset
    image.write_bytes(png_bytes(arr))
    with pytest.raises(RuntimeError, match="planned with different settings \\(dataset changed"):
        run(make_cfg(city, out, IN_PROCESS))


def test_retrained_weights_at_the_same_path_are_refused(city_root, tmp_path):
    plugin = tmp_path / "synth.py"
    shutil.copy(REPO / "tests" / "jobs" / "doubles.py", plugin)
    out = tmp_path / "out"
    run(make_cfg(city_root, out, IN_PROCESS, f"synthesizer={plugin}:build"))
    plugin.write_text(plugin.read_text() + "\n# retrained\n")  # same path, other contents
    with pytest.raises(RuntimeError, match="models changed"):
        run(make_cfg(city_root, out, IN_PROCESS, f"synthesizer={plugin}:build"))


# ---------------------------------------------------------------------------------- output lock
def _job_process(city: Path, out: Path, tmp: Path, *extra: str) -> subprocess.Popen:
    cfg_path = tmp / "job.yaml"
    cfg_path.write_text("{}\n")
    args = overrides(city, out, IN_PROCESS, *extra)
    cmd = [sys.executable, "-m", "factory.jobs.generate", "--config", str(cfg_path), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            holder = json.loads((out / LOCK_NAME).read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == proc.pid:
            return holder
        time.sleep(0.1)
    raise AssertionError(f"the job never took the lock: {proc.stderr.read().decode() if proc.stderr else ''}")


def test_a_second_job_on_a_busy_folder_is_refused_and_the_first_finishes(baseline, city_root, tmp_path):
    out = tmp_path / "out"
    first = _job_process(city_root, out, tmp_path, "faults.delay_s=1.0")
    try:
        _wait_for_lock(out, first)
        with pytest.raises(OutputLocked, match=f"in use by generate \\(pid {first.pid}"):
            run(make_cfg(city_root, out, IN_PROCESS))
        with pytest.raises(OutputLocked, match="in use"):  # another config: refused the same way
            run(make_cfg(city_root, out, IN_PROCESS, "seed=7"))
        assert first.wait(timeout=300) == 0, first.stderr.read().decode() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    assert shard_bytes(out) == shard_bytes(baseline)
    assert json.loads((out / LOCK_NAME).read_text())["released"]


def test_a_killed_jobs_lock_does_not_block_the_rerun(baseline, city_root, tmp_path, caplog):
    out = tmp_path / "out"
    job = _job_process(city_root, out, tmp_path, "faults.delay_s=1.0")
    _wait_for_lock(out, job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    with caplog.at_level("WARNING", logger="factory.jobs.lock"):
        run(make_cfg(city_root, out, IN_PROCESS))
    assert "ended without releasing its lock" in caplog.text
    assert shard_bytes(out) == shard_bytes(baseline)


def test_a_held_lock_without_heartbeat_is_reported_stale_with_how_to_clear_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'job': 'generate', 'pid': 4242, 'host': 'node-7', "
        "'heartbeat': time.time() - 3600, 'started': time.time() - 7200}).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        with pytest.raises(OutputLocked) as err:
            OutputLock(out, job="generate").acquire()
        message = str(err.value)
        assert "looks stale" in message and "node-7" in message and f"rm {out / LOCK_NAME}" in message
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------- setup errors
SETUP_ERRORS = {
    "base model folder": (["synthesizer=lumen", "synth.base_model=/nonexistent/sd15", "synth.condition={kind: canny}"], "/nonexistent/sd15"),
    "controlnet folder": (["synthesizer=lumen", "synth.controlnet=/nonexistent/controlnet"], "/nonexistent/controlnet"),
    "pca artifact": (["synthesizer=lumen", "synth.condition={kind: layout, layout: {pca: /nonexistent/pca}}"], "/nonexistent/pca"),
    "plugin file": (["synthesizer=/nonexistent/plugin.py:build"], "/nonexistent/plugin.py"),
    "plugin function": ([f"synthesizer={DOUBLE.split(':')[0]}:no_such_function"], "no_such_function"),
    "segmenter": (["quality.segmenter=/nonexistent/segmenter"], "/nonexistent/segmenter"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SETUP_ERRORS))
def test_setup_errors_stop_the_job_before_ray_and_before_any_output(city_root, tmp_path, case):
    import ray

    extra, named = SETUP_ERRORS[case]
    out = tmp_path / "out"
    cfg = make_cfg(city_root, out, *extra)  # the actor-pool executor: Ray would start for work
    ray_before = ray.is_initialized()  # a session-wide Ray may already run (tests/conftest.py)
    t0 = time.perf_counter()
    with pytest.raises(Exception) as err:
        run(cfg)
    assert named in str(err.value)
    assert time.perf_counter() - t0 < 20
    assert ray.is_initialized() == ray_before  # the job did not start one
    assert not (out / "plan.json").exists()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["seed=18446744073709551616"], "seed"),
        (["seed=-1"], "seed"),
        (["synth.guidance_scale=.inf"], "guidance_scale"),
        (["faults.delay_s=.nan"], "delay_s"),
        (["out=''"], "out"),
    ],
)
def test_out_of_range_values_are_config_errors(city_root, tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field):
        make_cfg(city_root, tmp_path / "out", *extra)


def test_a_run_that_produced_nothing_does_not_block_the_corrected_rerun(city_root, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "def build(cfg):\n"
        "    class Broken:\n"
        "        def setup(self):\n"
        "            raise FileNotFoundError('model folder /models/v2 is missing')\n"
        "    return Broken()\n"
    )
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="/models/v2"):
        run(make_cfg(city_root, out, IN_PROCESS, f"synthesizer={broken}:build"))
    assert (out / "plan.json").exists()  # planned, but nothing was produced...
    summary = run(make_cfg(city_root, out, IN_PROCESS))  # ...so the corrected config may take over
    assert summary.counts == {"ok": 6}


def test_a_plan_that_produced_nothing_is_replaced_and_the_new_one_holds(tmp_path):
    """A folder planned with other settings but holding no output gets the new plan written, so
    the next rerun (with shards by then) is held to the plan it ran with, not the abandoned one."""
    from factory.jobs.plan import PlanMismatch, check_plan

    out = tmp_path / "out"
    out.mkdir()
    check_plan(out, {"job": "generate", "seed": 0})
    check_plan(out, {"job": "generate", "seed": 1})  # nothing produced: replaced
    assert json.loads((out / "plan.json").read_text())["seed"] == 1
    (out / "shards").mkdir()
    (out / "shards" / "shard-000000.tar").write_bytes(b"")
    check_plan(out, {"job": "generate", "seed": 1})  # the plan it ran with: fine
    with pytest.raises(PlanMismatch, match="seed"):
        check_plan(out, {"job": "generate", "seed": 0})
