"""The domain-generalisation benchmark: ACDC guard, table, and a two-mix miniature run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from downstream.benchmarks import dg
from factory.data.sample import DataError

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "downstream" / "segformer_tiny_procedural-64x128.py"


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "downstream.benchmarks.dg", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--lumen" in out and "--seeds" in out and "ACDC" in out


def test_acdc_guard_catches_acdc_in_training(acdc_root, cs_root):
    from mmseg.registry import DATASETS

    forbidden = dg.acdc_keys(acdc_root)
    assert len(forbidden) == 4 * 2 * 3  # weathers x splits x images (refs share the keys)
    cs = DATASETS.build(dict(type="CityscapesLabelIdsDataset", data_root=str(cs_root), split="train"))
    assert dg.check_no_acdc_in_training(cs, forbidden) == 6
    leak = DATASETS.build(
        dict(
            type="MixedDataset",
            real=dict(type="CityscapesLabelIdsDataset", data_root=str(cs_root)),
            synth=dict(type="ACDCDataset", data_root=str(acdc_root), weather="fog", split="train"),
        )
    )
    with pytest.raises(DataError, match="is an ACDC image"):
        dg.check_no_acdc_in_training(leak, forbidden)


def test_acdc_guard_checks_shard_source_keys(ref_shards, acdc_root):
    from mmseg.registry import DATASETS

    forbidden = dg.acdc_keys(acdc_root)
    ds = DATASETS.build(dict(type="LumenShardDataset", shards=[str(p) for p in ref_shards]))
    assert dg.check_no_acdc_in_training(ds, forbidden) == 6
    # a variant generated from an ACDC reference (its source key is an ACDC key) must be refused
    src = ds.get_data_info(0)["source_key"]
    with pytest.raises(DataError, match=f"source {src!r}"):
        dg.check_no_acdc_in_training(ds, forbidden | {src})


def test_pca_guard(tmp_path, acdc_root):
    forbidden = dg.acdc_keys(acdc_root)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"fit_keys": ["aachen_000000_000019"]}))
    assert dg.check_pca_meta(ok, forbidden) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fit_keys": ["aachen_000000_000019", sorted(forbidden)[0]]}))
    with pytest.raises(DataError, match="fitted on ACDC images"):
        dg.check_pca_meta(bad, forbidden)
    none = tmp_path / "none.json"
    none.write_text(json.dumps({"n": 20}))
    with pytest.raises(DataError, match="lists no fitted sample keys"):
        dg.check_pca_meta(none, forbidden)


def test_summary_and_table():
    runs = {
        "real": [
            dict(CS=50, Rain=30, Fog=20, Snow=25, Night=10, Avg=21.25),
            dict(CS=52, Rain=32, Fog=22, Snow=27, Night=12, Avg=23.25),
        ]
    }
    s = dg.summarise(runs)
    assert s["real"]["CS"]["mean"] == 51 and abs(s["real"]["CS"]["std"] - 2**0.5) < 1e-9
    table = dg.format_table(s)
    assert table.splitlines()[0].split()[-6:] == list(dg.COLUMNS)
    assert "51.0 +- 1.4" in table
    assert "one seed" not in table


def test_table_shows_no_spread_for_one_seed():
    """One seed has no spread to show: the cell is the mean alone and a footer says so."""
    s = dg.summarise({"real": [dict(CS=50, Rain=30, Fog=20, Snow=25, Night=10, Avg=21.25)]})
    table = dg.format_table(s)
    row = table.splitlines()[1]
    assert "+-" not in row and row.split()[1:] == ["50.0", "30.0", "20.0", "25.0", "10.0", "21.2"]
    assert "one seed: real" in table.splitlines()[-1]


@pytest.mark.slow
def test_dg_miniature_run(city_env, ref_shards, tmp_path):
    out = tmp_path / "dg"
    lumen = str(ref_shards[0].parent / "*.tar")
    argv = ["--config", str(CONFIG), "--lumen", lumen, "--seeds", "0", "--max-iters", "2", "--out", str(out)]
    result = dg.main(argv)
    assert set(result["summary"]) == {"real", "real + LUMEN"}
    for mix in result["runs"].values():
        assert len(mix) == 1 and all(set(r) == set(dg.COLUMNS) for r in mix)
    assert (out / "dg.png").stat().st_size > 1000
    assert json.loads((out / "dg.json").read_text())["seeds"] == [0]


def test_dg_rerun_reuses_finished_runs_and_resumes_a_killed_one(city_env, ref_shards, tmp_path, monkeypatch):
    """A rerun trains nothing that finished with the same recipe; a run killed after its
    checkpoint resumes from it; another recipe (a different --max-iters) trains afresh."""
    import downstream.segformer.train as seg_train

    out = tmp_path / "dg"
    lumen = str(ref_shards[0].parent / "*.tar")
    argv = ["--config", str(CONFIG), "--lumen", lumen, "--seeds", "0", "--max-iters", "2", "--out", str(out)]
    first = dg.main(argv)
    trained: list[tuple[str, bool]] = []
    real_train = seg_train.train

    def counting_train(cfg):
        trained.append((cfg.work_dir, bool(cfg.resume)))
        return real_train(cfg)

    monkeypatch.setattr(seg_train, "train", counting_train)
    again = dg.main(argv)
    assert trained == [] and again["runs"] == first["runs"]
    trained.clear()
    dg.main([*argv[:-4], "--max-iters", "3", "--out", str(out)])  # another recipe: both retrain
    assert set(trained) == {(str(out / "real" / "seed0"), False), (str(out / "real+LUMEN" / "seed0"), False)}
    # "kill" the real-only run after its checkpoint (its scores are gone, its checkpoint is not)
    # and rerun the benchmark as a user would, in a new process: that run alone resumes
    killed = out / "real" / "seed0"
    (killed / "scores.json").unlink()
    assert (killed / "last_checkpoint").is_file()
    before = {p.name for p in (out / "real+LUMEN" / "seed0").iterdir()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "downstream.benchmarks.dg",
        *argv[:-4],
        "--max-iters",
        "3",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = sorted(killed.glob("*/*.log"))
    assert "resumed" in logs[-1].read_text().lower() and (killed / "scores.json").is_file()
    assert {p.name for p in (out / "real+LUMEN" / "seed0").iterdir()} == before  # not retrained


@pytest.mark.slow
def test_ratio_is_chosen_on_acdc_train_and_its_runs_are_reused(city_env, ref_shards, tmp_path, monkeypatch):
    """--select-ratios: each candidate is trained with the selection seed and scored on the ACDC
    train split; the best one is the mix's ratio for every seed, and its selection run is that
    seed's run (not trained twice). The reported val columns never decide."""
    import downstream.segformer.train as seg_train

    trained: list[str] = []
    real_train = seg_train.train
    monkeypatch.setattr(seg_train, "train", lambda cfg: trained.append(cfg.work_dir) or real_train(cfg))
    out = tmp_path / "dg"
    lumen = str(ref_shards[0].parent / "*.tar")
    result = dg.main(
        ["--config", str(CONFIG), "--lumen", lumen, "--seeds", "0", "1", "--max-iters", "2",
         "--select-ratios", "0.25", "0.5", "--out", str(out)]
    )  # fmt: skip
    sel = result["selection"]["real + LUMEN"]
    assert sel["split"] == "train" and sel["seeds"] == [0] and set(sel["scores"]) == {"0.25", "0.5"}
    assert sel["chosen"] == float(max(sel["scores"], key=lambda k: sel["scores"][k]))
    assert result["ratio"] == {"real + LUMEN": sel["chosen"]}
    chosen = dg.ratio_dir(out, sel["chosen"])
    for r in ("0.25", "0.5"):
        row = json.loads((out / f"ratio-{r}" / "real+LUMEN" / "seed0" / "scores.json").read_text())["scores"]
        assert row["train Avg"] == pytest.approx(sel["scores"][r])
        assert {"train Rain", "train Fog", "train Snow", "train Night"} <= set(row)
    assert sorted(trained) == sorted(
        [str(out / "real" / "seed0"), str(out / "real" / "seed1"), str(out / "ratio-0.25" / "real+LUMEN" / "seed0"),
         str(out / "ratio-0.5" / "real+LUMEN" / "seed0"), str(chosen / "real+LUMEN" / "seed1")]
    )  # fmt: skip
    assert "Mix ratio chosen per mix on ACDC train" in result["table"]


def test_plots_draw_error_bars_only_with_several_seeds(tmp_path):
    """One seed has no spread to show: no error bars (a zero-length bar reads as "no spread"),
    and the title says how many seeds; with several seeds the bars are the sample std."""
    from matplotlib.container import ErrorbarContainer

    from downstream.benchmarks.common import error_bars, seeds_note, summarise

    one = summarise({"real": [{c: 10.0 for c in dg.COLUMNS}]}, dg.COLUMNS)
    two = summarise({"real": [{c: 10.0 for c in dg.COLUMNS}, {c: 12.0 for c in dg.COLUMNS}]}, dg.COLUMNS)
    assert error_bars(list(one["real"].values())) is None and seeds_note(one) == "1 seed (no error bars)"
    assert error_bars(list(two["real"].values())) == pytest.approx([2**0.5] * len(dg.COLUMNS))
    assert seeds_note(two) == "n = 2 seeds, bars = 1 std"

    import matplotlib.pyplot as plt

    drawn = []
    real_savefig = plt.Figure.savefig

    def capture(fig, *args, **kwargs):
        drawn.append(sum(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers))
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = capture  # type: ignore[method-assign]
    try:
        dg.plot(one, tmp_path / "one.png")
        dg.plot(two, tmp_path / "two.png")
    finally:
        plt.Figure.savefig = real_savefig  # type: ignore[method-assign]
    assert drawn == [0, 1]
