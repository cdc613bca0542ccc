"""Issue 15 item 5: the generation job's output on an object store (``out=s3://bucket/run``).

The S3 cases run against moto's standalone S3 server, started as a real separate process on a
free loopback port (as s3fs's own tests do); the job reaches it through s3fs with the endpoint
in ``storage_options`` and test credentials in the environment. The store's operations are
also checked on ``memory://`` (no server) and on a local folder: one contract, two stores.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from factory.config import ConfigError
from factory.data.read import iter_samples
from factory.jobs.generate import run
from factory.jobs.lock import LOCK_NAME, ObjectStoreLock, OutputLocked
from factory.shards import Manifest, read_shard_samples
from factory.storage import FsspecStore, LocalStore, StorageError, Store, is_uri, location, open_store

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from jobcfg import REPO, make_cfg, overrides, shard_bytes  # noqa: E402

pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[s3]')")
pytest.importorskip("moto", reason="the dev extra (moto[server])")

IN_PROCESS = "executor=in_process"
SHARDS = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


# ---------------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in its own process, and the environment that s3fs/boto3 read."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata address
        }.items():
            mp.setenv(name, value)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(endpoint, timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("moto's S3 server did not start") from None
                    time.sleep(0.2)
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def bucket(s3_endpoint) -> str:
    import boto3

    name = f"lumen-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_cfg(city: Path, uri: str, endpoint: str, *extra: str):
    return make_cfg(city, uri, f"storage_options.endpoint_url={endpoint}", *extra)


def s3_store(uri: str, endpoint: str) -> Store:
    return open_store(uri, {"endpoint_url": endpoint})


def objects(uri: str, endpoint: str) -> dict[str, bytes]:
    """Every object under ``uri`` (relative key -> bytes), read with boto3, not with our code."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {
        o["Key"].removeprefix(prefix + "/"): client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


@pytest.fixture(scope="module")
def local_run(city_root, tmp_path_factory) -> Path:
    """An uninterrupted local in-process run: what every S3 run must equal byte for byte."""
    out = tmp_path_factory.mktemp("local")
    assert run(make_cfg(city_root, out, IN_PROCESS)).counts == {"ok": 6}
    return out


# ---------------------------------------------------------------------------------- the store
@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    return open_store(f"memory://lumen-test-{uuid.uuid4().hex[:8]}/run")


def test_every_store_operation_keeps_one_contract(store):
    assert store.listdir() == [] and store.size("plan.json") is None and not store.exists("shards")
    store.put_bytes("plan.json", b"{}")
    store.put_bytes("manifest/shard-000000.parquet", b"part")
    assert store.read_bytes("plan.json") == b"{}" and store.size("plan.json") == 2
    assert store.listdir() == ["plan.json"] and store.listdir("manifest") == ["shard-000000.parquet"]
    assert store.exists("manifest") and store.exists("plan.json") and store.listdir("nothing") == []
    shards = store.child("shards")
    with shards.staged("shard-000000.tar") as tmp:  # a local file, committed on exit
        tmp.write_bytes(b"x" * 1500)
    assert shards.size("shard-000000.tar") == 1500 and store.size("shards/shard-000000.tar") == 1500
    assert store.sizes("shards") == {"shard-000000.tar": 1500} and store.sizes("nothing") == {}
    with shards.open("shard-000000.tar", block_size=512) as f:  # seekable, as tarfile needs
        f.seek(1000)
        assert f.read(10) == b"x" * 10
    with pytest.raises(ValueError, match="boom"), shards.staged("shard-000001.tar") as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("boom")
    assert shards.listdir() == ["shard-000000.tar"]  # nothing of a failed write, not even a temporary
    if store.local_path() is not None:
        assert sorted(p.name for p in (store.local_path() / "shards").iterdir()) == ["shard-000000.tar"]
    assert store.create("lock", b"first") and not store.create("lock", b"second")
    assert store.read_bytes("lock") == b"first"
    store.remove("lock")
    store.remove("lock")  # absent: nothing happens
    assert store.size("lock") is None
    assert shards.where("a.tar") == f"{store.location}/shards/a.tar"


def test_store_errors_name_the_uri_and_the_fix(tmp_path):
    with pytest.raises(StorageError, match="s4://x/run: fsspec cannot open this URI"):
        open_store("s4://x/run")
    with pytest.raises(StorageError, match="gs://b/run: writing to gs:// needs gcsfs.*pip install gcsfs"):
        open_store("gs://b/run")
    with pytest.raises(StorageError, match="storage_options apply to an fsspec URI"):
        open_store(tmp_path, {"endpoint_url": "http://x"})
    assert is_uri("s3://b/run") and is_uri("simplecache::s3://b/run") and not is_uri("/data/out")
    assert location("s3://b/run/") == "s3://b/run" and location("file:///tmp/x") == Path("/tmp/x")
    assert isinstance(open_store("memory://b/run"), FsspecStore)


def test_missing_s3fs_is_named_with_the_extra_to_install(monkeypatch):
    import fsspec

    def no_s3fs(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_s3fs)
    with pytest.raises(
        StorageError, match=r"needs s3fs, which is not installed \(fix: pip install s3fs.*s3\]"
    ):
        open_store("s3://bucket/run")


def test_out_may_be_a_uri_and_path_fields_refuse_one(city_root, tmp_path):
    cfg = make_cfg(city_root, "s3://bucket/run/", "storage_options.endpoint_url=http://127.0.0.1:1")
    assert cfg.out == "s3://bucket/run" and cfg.storage_options == {"endpoint_url": "http://127.0.0.1:1"}
    assert make_cfg(city_root, tmp_path / "out").out == tmp_path / "out"  # local stays a Path
    with pytest.raises(
        ConfigError, match="variants.prompts: 's3://b/p.yaml' is a URI, and this field takes a local"
    ):
        make_cfg(city_root, tmp_path / "out", "variants.prompts=s3://b/p.yaml")
    assert make_cfg(city_root, tmp_path / "out", "dataset.root=s3://b/city/").dataset.root == "s3://b/city"
    with pytest.raises(ConfigError, match="kind=shards reads a local folder"):
        make_cfg(city_root, tmp_path / "out", "dataset.root=s3://b/shards", "dataset.kind=shards")
    with pytest.raises(ConfigError, match="dataset.storage_options: apply to an fsspec URI root"):
        make_cfg(city_root, tmp_path / "out", "dataset.storage_options.endpoint_url=http://x")
    with pytest.raises(ConfigError, match="storage_options: apply to an fsspec URI out"):
        make_cfg(city_root, tmp_path / "out", "storage_options.endpoint_url=http://x")


# ---------------------------------------------------------------------------------- a dataset on a URI
def upload(folder: Path, store: Store) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            store.put_bytes(p.relative_to(folder).as_posix(), p.read_bytes())


def test_a_dataset_on_a_uri_lists_like_its_local_copy_and_fetches_only_what_is_read(city_root, tmp_path):
    """One listing of the URI (no download) gives the local copy's references, in the cache's
    coordinates; fetch brings one reference's files, byte-equal; errors name the URI."""
    from factory.data.datasets import DatasetConfig, list_samples
    from factory.data.sample import DataError
    from factory.data.tree import cache_root, fetch

    base = f"memory://lumen-ds-{uuid.uuid4().hex[:8]}"
    for name in ("cityscapes", "acdc"):
        upload(city_root / name, open_store(f"{base}/{name}"))
    cache = tmp_path / "cache"
    for kind, name, split in (("cityscapes", "cityscapes", "train"), ("cityscapes", "cityscapes", "val"),
                              ("acdc", "acdc", "train")):  # fmt: skip
        local = list_samples(DatasetConfig(kind=kind, root=city_root / name, split=split)).refs
        remote = list_samples(DatasetConfig(kind=kind, root=f"{base}/{name}", split=split, cache=cache)).refs
        root = cache_root(f"{base}/{name}", cache)
        assert [r.key for r in remote] == [r.key for r in local] and local
        for lr, rr in zip(local, remote):
            rel = {k: Path(p).relative_to(city_root / name) for k, p in lr.paths.items()}
            assert {k: Path(p).relative_to(root) for k, p in rr.paths.items()} == rel
            assert {k: v for k, v in rr.meta.items() if k != "remote"} == lr.meta
            assert set(rr.meta["remote"]["files"]) == set(rr.paths)
    assert not cache.exists()  # listing downloads nothing
    ref = remote[0]
    fetch(ref)
    for kind, path in ref.paths.items():
        assert Path(path).read_bytes() == Path(local[0].paths[kind]).read_bytes(), kind
    assert len([p for p in cache.rglob("*") if p.is_file()]) == len(ref.paths)  # that reference only
    with pytest.raises(DataError, match=f"{base}/nothing: Cityscapes root does not exist"):
        list_samples(DatasetConfig(root=f"{base}/nothing", cache=cache))
    with pytest.raises(DataError, match=f"{base}/cityscapes/leftImg8bit/test: split 'test' not found"):
        list_samples(DatasetConfig(root=f"{base}/cityscapes", split="test", cache=cache))


def test_the_job_reads_its_dataset_from_s3_with_the_bytes_of_a_local_run(
    s3_endpoint, bucket, city_root, local_run, tmp_path
):
    """dataset.root=s3://...: the references are listed from moto's server and fetched into the
    node cache by the workers; the shards equal a local run's; the rerun resumes; a rewritten
    object is a changed dataset."""
    uri = f"s3://{bucket}/city/cityscapes"
    upload(city_root / "cityscapes", s3_store(uri, s3_endpoint))
    out = tmp_path / "out"
    args = (IN_PROCESS, f"dataset.root={uri}", f"dataset.storage_options.endpoint_url={s3_endpoint}",
            f"dataset.cache={tmp_path / 'cache'}")  # fmt: skip
    keys = (
        "dataset.storage_options.key=testing",
        "dataset.storage_options.secret=testing",
    )  # explicit, as moto's
    summary = run(make_cfg(city_root, out, *args, *keys))
    assert summary.counts == {"ok": 6} and shard_bytes(out) == shard_bytes(local_run)
    card = json.loads((out / "card.json").read_text())
    assert card["config"]["dataset"]["storage_options"] == {
        "key": "<redacted>",
        "secret": "<redacted>",
        "endpoint_url": s3_endpoint,
    }
    again = run(make_cfg(city_root, out, *args))
    assert again.shards_skipped == 3 and again.shards_redone == {}
    image = sorted((city_root / "cityscapes" / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[0]
    rel = image.relative_to(city_root / "cityscapes").as_posix()
    s3_store(uri, s3_endpoint).put_bytes(rel, image.read_bytes() + b"\0")  # one object rewritten
    with pytest.raises(RuntimeError, match="dataset changed"):
        run(make_cfg(city_root, out, *args))


# ---------------------------------------------------------------------------------- the lock on stores
def test_lock_without_atomic_create_is_best_effort_and_says_so(caplog):
    store = open_store(f"memory://lumen-lock-{uuid.uuid4().hex[:8]}/run")
    assert not store.atomic_create  # fsspec's memory create is check-then-write
    with caplog.at_level("WARNING", logger="factory.jobs.lock"), ObjectStoreLock(store, job="generate"):
        assert "best effort" in caplog.text and "could both get it" in caplog.text
        with pytest.raises(OutputLocked, match="in use by generate"):
            ObjectStoreLock(store, job="generate").acquire()
    assert store.size(LOCK_NAME) is None  # released = removed


def test_a_dead_local_holder_is_taken_over_once(caplog):
    store = open_store(f"memory://lumen-lock-{uuid.uuid4().hex[:8]}/run")
    ObjectStoreLock(store, job="generate", run_id="dead").acquire()  # never released: the job "dies"
    record = json.loads(store.read_bytes(LOCK_NAME))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    store.put_bytes(
        LOCK_NAME, json.dumps({**record, "pid": int(dead.stdout)}).encode()
    )  # its process is gone
    with (
        caplog.at_level("WARNING", logger="factory.jobs.lock"),
        ObjectStoreLock(store, job="generate", run_id="rerun"),
    ):
        assert "ended without releasing its lock" in caplog.text
        assert json.loads(store.read_bytes(LOCK_NAME))["run_id"] == "rerun"
        assert store.listdir() == [LOCK_NAME, f"{LOCK_NAME}.takeover-{record['token']}"]
        with pytest.raises(OutputLocked, match="in use by generate"):  # the rerun's lock is alive
            ObjectStoreLock(store, job="generate").acquire()
    assert store.listdir() == []  # the lock and the takeover marker are gone


def test_s3_conditional_put_lets_exactly_one_of_two_jobs_take_the_lock(s3_endpoint, bucket, caplog):
    store = s3_store(f"s3://{bucket}/run", s3_endpoint)
    assert store.atomic_create
    won: list[ObjectStoreLock] = []
    refused: list[str] = []
    barrier = threading.Barrier(2)

    def contend(n: int) -> None:
        lock = ObjectStoreLock(store, job="generate", run_id=f"job{n}")
        barrier.wait()
        try:
            won.append(lock.acquire())
        except OutputLocked as e:
            refused.append(str(e))

    with caplog.at_level("WARNING", logger="factory.jobs.lock"):
        threads = [threading.Thread(target=contend, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(won) == 1 and len(refused) == 1 and "in use by generate" in refused[0]
    assert "best effort" not in caplog.text  # moto honours If-None-Match: the lock is atomic
    won[0].release()
    assert store.size(LOCK_NAME) is None


# ---------------------------------------------------------------------------------- the job on S3
def test_job_writes_to_s3_and_the_shards_read_back_equal_a_local_run(
    city_root, local_run, s3_endpoint, bucket
):
    uri = f"s3://{bucket}/run"
    summary = run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS))
    assert summary.out == uri and summary.counts == {"ok": 6} and summary.shards_total == 3
    found = objects(uri, s3_endpoint)
    assert sorted(found) == sorted(
        ["card.json", "card.md", "contact_sheet.png", "plan.json"]
        + [f"shards/{s}" for s in SHARDS]
        + [f"manifest/{s.replace('.tar', '.parquet')}" for s in SHARDS]
    )  # no lock left behind, no temporary ever written to the bucket
    assert {n: found[f"shards/{n}"] for n in SHARDS} == shard_bytes(local_run)
    # read back: our reader, and stock webdataset's tar expander over fsspec streams
    urls = [f"{uri}/shards/{n}" for n in SHARDS]
    options = {"endpoint_url": s3_endpoint}
    keys = [s["__key__"] for s in iter_samples(urls, storage_options=options)]
    assert len(keys) == 6 and len(set(keys)) == 6
    local = {s["__key__"]: s for s in read_shard_samples(sorted((local_run / "shards").glob("*.tar")))}

    def members(sample: dict) -> dict:
        return {k: v for k, v in sample.items() if not k.startswith("__")}

    for s in read_shard_samples(urls, storage_options=options):
        assert members(s) == members(local[s["__key__"]]) and s["__url__"].startswith(uri)
    manifest = Manifest(s3_store(uri, s3_endpoint).child("manifest"))
    assert Counter(r["status"] for r in manifest.rows()) == {"ok": 6}
    card = json.loads(found["card.json"])
    assert card["out"] == uri and card["samples"]["accepted"] == 6
    # a rerun verifies every shard (members: headers only) and skips all three
    again = run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS, "resume_check=members"))
    assert again.shards_skipped == 3 and again.shards_redone == {}


def test_stock_webdataset_reads_an_s3_shard_through_a_pipe(local_run, s3_endpoint, bucket):
    import webdataset as wds

    uri = f"s3://{bucket}/run/shards/shard-000000.tar"
    s3_store(f"s3://{bucket}/run", s3_endpoint).put_bytes(
        "shards/shard-000000.tar", (local_run / "shards" / SHARDS[0]).read_bytes()
    )
    env = f"AWS_ENDPOINT_URL={s3_endpoint} PYTHONPATH={REPO}"  # the endpoint from the environment
    samples = list(
        wds.WebDataset(f"pipe:{env} {sys.executable} -m factory.storage cat {uri}", shardshuffle=False)
    )
    expected = list(read_shard_samples([local_run / "shards" / SHARDS[0]]))
    assert [s["__key__"] for s in samples] == [s["__key__"] for s in expected]
    assert all(
        a["png"] == b["png"] and a["labelids.png"] == b["labelids.png"] for a, b in zip(samples, expected)
    )


def _truncated(data: bytes, members: int) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return data[: tar.getmembers()[members].offset]


def test_a_killed_job_on_s3_resumes_to_the_bytes_of_an_uninterrupted_run(
    city_root, local_run, s3_endpoint, bucket, tmp_path, caplog
):
    uri = f"s3://{bucket}/run"
    store = s3_store(uri, s3_endpoint)
    manifest = Manifest(store.child("manifest"))
    # 1. The job as a CLI process (slow shards), SIGKILLed once it has committed one shard.
    (tmp_path / "job.yaml").write_text("{}\n")
    args = overrides(
        city_root, uri, IN_PROCESS, "faults.delay_s=1.5", f"storage_options.endpoint_url={s3_endpoint}"
    )
    cmd = [sys.executable, "-m", "factory.jobs.generate", "--config", str(tmp_path / "job.yaml"), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not manifest.done_shards() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = manifest.done_shards()
    assert 1 <= len(finished) < 3, proc.stderr.read().decode() if proc.stderr else ""
    assert store.size(LOCK_NAME) is not None  # a killed job cannot remove its lock object
    # 2. Damage on top: a committed shard's tar replaced by a cut copy (its part intact), and a
    #    stray tar without a part where a shard was never committed (an orphan upload).
    cut = sorted(finished)[0]
    store.put_bytes(f"shards/{cut}.tar", _truncated(store.read_bytes(f"shards/{cut}.tar"), 3))
    orphan = max({s.removesuffix(".tar") for s in SHARDS} - finished)
    store.put_bytes(f"shards/{orphan}.tar", b"\0" * 1024)
    # 3. The rerun takes the dead job's lock over (same machine, its process gone) and resumes.
    with caplog.at_level("WARNING", logger="factory.jobs.lock"):
        summary = run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS, "resume_check=members"))
    assert "ended without releasing its lock" in caplog.text
    assert (
        list(summary.shards_redone) == [cut]
        and "bytes, its manifest part records" in summary.shards_redone[cut]
    )
    assert set(summary.shards_done) == {s.removesuffix(".tar") for s in SHARDS} - finished | {cut}
    found = objects(uri, s3_endpoint)
    assert {n: found[f"shards/{n}"] for n in SHARDS} == shard_bytes(local_run)
    accepted = Counter(r["key"] for r in manifest.rows() if r["status"] == "ok")
    assert len(accepted) == 6 and set(accepted.values()) == {1}  # none lost, none twice
    assert LOCK_NAME not in found and not [k for k in found if "takeover" in k]


def test_a_second_job_on_a_busy_s3_output_is_refused(city_root, s3_endpoint, bucket):
    uri = f"s3://{bucket}/run"
    with (
        ObjectStoreLock(s3_store(uri, s3_endpoint), job="generate", run_id="first"),
        pytest.raises(
            OutputLocked,
            match=rf"in use by generate \(pid {os.getpid()} .*run first.*Lock object: {uri}/.lock",
        ),
    ):
        run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS))
    assert objects(uri, s3_endpoint) == {}  # refused before anything was written


def test_a_stale_lock_on_s3_is_reported_with_how_to_remove_it(city_root, s3_endpoint, bucket):
    uri = f"s3://{bucket}/run"
    holder = {
        "job": "generate",
        "pid": 4242,
        "host": "node-7",
        "token": "t",
        "heartbeat": time.time() - 3600,
        "started": time.time() - 7200,
    }
    s3_store(uri, s3_endpoint).put_bytes(LOCK_NAME, json.dumps(holder).encode())
    with pytest.raises(OutputLocked) as err:
        run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS))
    message = str(err.value)
    assert "looks stale" in message and "node-7" in message and "60 min ago" in message
    assert f"python -m factory.storage rm {uri}/.lock" in message
    # the fix, as the message gives it (the endpoint from the environment), then the job runs
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": s3_endpoint}
    subprocess.run([sys.executable, "-m", "factory.storage", "rm", f"{uri}/.lock"], env=env, check=True)
    assert run(s3_cfg(city_root, uri, s3_endpoint, IN_PROCESS)).counts == {"ok": 6}


def test_actor_pool_workers_write_to_s3_with_the_config_s_storage_options(
    city_root, local_run, s3_endpoint, bucket, ray_local
):
    """Ray workers are other processes: the endpoint and (here) the keys travel in the config;
    the card keeps the endpoint and redacts the keys."""
    uri = f"s3://{bucket}/run"
    secrets = ["storage_options.key=testing", "storage_options.secret=testing"]
    summary = run(s3_cfg(city_root, uri, s3_endpoint, "ray.num_actors=2", *secrets))
    assert summary.counts == {"ok": 6}
    found = objects(uri, s3_endpoint)
    assert {n: found[f"shards/{n}"] for n in SHARDS} == shard_bytes(local_run)
    options = json.loads(found["card.json"])["config"]["storage_options"]
    assert options == {"endpoint_url": s3_endpoint, "key": "<redacted>", "secret": "<redacted>"}
