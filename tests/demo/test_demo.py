"""make demo end to end with minute budgets: every stage runs, the report carries the tables."""

from __future__ import annotations

import json

import pytest

from demo.stages import STAGES, DemoConfig, main
from factory.config import ConfigError, load_config

TINY = [
    "n_train=8",
    "n_val=4",
    "n_acdc=2",
    "judge_steps=20",
    "base_overrides=[max_minutes=0.3, n_scenes=32, vae_steps=10, unet_steps=10, preview_steps=2, preview_per_weather=1]",
    "controlnet_overrides=[steps=4, validation.every=4, checkpoint_every=2, validation.steps=2, validation.num_references=1]",
    "depth_judge_steps=5",
    "weather_judge_steps=5",
    "compare_n=2",
    "compare_weather_refs=1",
    "compare_steps=2",
    "variants=[fog, night]",
    "generate_overrides=[synth.steps=2, batch_size=4, samples_per_shard=8]",
    "pca_samples=2000",
    "dg_seeds=[0]",
    "dg_max_iters=4",
    "multitask_iters=4",
    "dg_classical=true",  # make paper's baselines: exercised here at the tiniest budget
    "dg_oracle=true",
    "dg_select_ratios=[0.5]",  # make paper's ratio selection on ACDC train, one candidate: no extra run
    "generate_refs=0",  # every one of the 8 train references
]


def test_demo_config_rejects_bad_budgets():
    with pytest.raises(ConfigError, match="dg_ratio"):
        load_config(DemoConfig, "configs/demo.yaml", ["dg_ratio=1.5"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(DemoConfig, "configs/demo.yaml", ["n_trian=3"])
    with pytest.raises(ConfigError, match="multitask_mixes"):
        load_config(DemoConfig, "configs/demo.yaml", ["multitask_mixes=[real, fake]"])


@pytest.mark.slow
def test_demo_runs_every_stage_and_caches(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), *TINY]) == 0
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    report = (out / "report.md").read_text()
    assert "Conditioning comparison" in report and "Domain generalisation" in report
    assert "Weather steering of the base model" in report and "fog and snow brighter" in report
    assert (out / "generate" / "contact_sheet.png").is_file()
    dg = json.loads((out / "dg" / "dg.json").read_text())
    assert set(dg["summary"]) == {"real", "real + LUMEN", "real + classical aug", "real + oracle"}
    assert set(dg["paired_difference_to_real"]) == {"real + LUMEN", "real + classical aug", "real + oracle"}
    oracle = json.loads((out / "oracle" / "card.json").read_text())
    assert oracle["samples"]["accepted"] == 8 * 2  # every train reference x fog, night
    for mix in ("real + LUMEN", "real + classical aug", "real + oracle"):
        assert f"Claim: {mix} above real-only on the adverse-weather average" in report
    assert "one seed (no interval: run more seeds)" in report
    assert "Mix ratio chosen per mix on ACDC train" in report and set(dg["selection"]) == set(dg["ratio"])
    assert "Multi-task: do LUMEN images carry" in report and "mDS" in report
    mt = json.loads((out / "multitask" / "multitask.json").read_text())
    assert set(mt["summary"]) == {"real", "real + LUMEN"}
    assert mt["ratio"] == dg["ratio"]["real + LUMEN"] == 0.5
    assert "Share of LUMEN draws in real + LUMEN: 0.5, chosen for real + LUMEN by the DG stage" in report
    pca = json.loads((out / "layouts" / "pca.json").read_text())
    assert pca["fit_keys"] and not any("GOPR" in k for k in pca["fit_keys"])
    capsys.readouterr()
    # A second run finds every stage cached and redoes nothing.
    assert main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached") == len(STAGES)
    # Forcing a stage reruns it and everything after it (the report must not describe old results).
    assert main(["--out", str(out), *TINY, "--force", "multitask"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached") == STAGES.index("multitask")
    assert "multitask: done in" in printed and "report: done in" in printed


def test_demo_uses_the_shipped_foundation_model_unless_from_scratch(tmp_path):
    from demo.stages import Demo

    shipped = Demo(load_config(DemoConfig, "configs/demo.yaml"), tmp_path, set())
    assert shipped.base.name == "procedural-base-v1" and (shipped.base / "hashes.json").is_file()
    assert shipped.stage_outputs("base") == []  # a stage rerun never deletes the shipped model
    meta = shipped.stage_base()
    assert meta["unet_steps_done"] == 3000 and "weather_stats" in meta
    scratch = Demo(load_config(DemoConfig, "configs/demo.yaml", ["from_scratch=true"]), tmp_path, set())
    assert scratch.base == tmp_path.resolve() / "models" / "base" and scratch.stage_outputs("base") == [
        scratch.base
    ]


def test_a_changed_budget_reruns_its_stage_and_what_follows_only(tmp_path):
    from dataclasses import fields

    from demo.stages import STAGE_FIELDS, Demo

    read = {f for names in STAGE_FIELDS.values() for f in names}
    assert set(STAGE_FIELDS) == set(STAGES) and read == {f.name for f in fields(DemoConfig)}
    base = Demo(load_config(DemoConfig, "configs/demo.yaml"), tmp_path, set()).fingerprints()
    for override, first_changed in (("dg_seeds=[0, 1, 2]", "dg"), ("compare_n=4", "compare"),
                                    ("generate_refs=8", "generate"), ("n_train=64", "city")):  # fmt: skip
        got = Demo(load_config(DemoConfig, "configs/demo.yaml", [override]), tmp_path, set()).fingerprints()
        k = STAGES.index(first_changed)
        assert [got[s] == base[s] for s in STAGES] == [True] * k + [False] * (len(STAGES) - k), override


def test_multitask_ratio_is_the_one_dg_chose_on_acdc_train_never_its_own_val(tmp_path):
    from demo.stages import Demo

    picked = Demo(load_config(DemoConfig, "configs/paper.yaml"), tmp_path, set())
    picked.results["dg"] = {"ratio": {"real + LUMEN": 0.25, "real + oracle": 0.5}}
    assert picked.multitask_ratio() == (0.25, "chosen for real + LUMEN by the DG stage on ACDC train")
    fixed = Demo(load_config(DemoConfig, "configs/demo.yaml", ["dg_ratio=0.4"]), tmp_path, set())
    fixed.results["dg"] = {"ratio": {"real + LUMEN": 0.4}}
    assert fixed.multitask_ratio() == (0.4, "fixed in advance (dg_ratio)")


def test_demo_uses_the_shipped_judges_unless_from_scratch(tmp_path):
    from demo.stages import Demo

    shipped = Demo(load_config(DemoConfig, "configs/demo.yaml"), tmp_path, set())
    assert shipped.judges.name == "procedural-judges-v1" and shipped.stage_outputs("judge") == []
    result = shipped.stage_judge()  # verifies the hashes and the size, trains nothing
    assert result["shipped"] and result["path"] == str(shipped.judge) and result["n_images"] == 192
    assert not (tmp_path / "models").exists()
    scratch = Demo(load_config(DemoConfig, "configs/demo.yaml", ["from_scratch=true"]), tmp_path, set())
    assert scratch.judge == tmp_path.resolve() / "models" / "judges" / "segmenter"
    assert scratch.stage_outputs("judge") == [scratch.judges]
    other_size = Demo(
        load_config(DemoConfig, "configs/demo.yaml", ["height=128", "width=256"]), tmp_path, set()
    )
    with pytest.raises(ConfigError, match="trained at 64x128, the demo runs at 128x256.*--from-scratch"):
        other_size.stage_judge()


def test_city_seed_changes_the_city_alone(tmp_path, monkeypatch):
    """make demo/paper CITY_SEED=<n>: the city is drawn with n, every other seed stays."""
    from demo.stages import Demo
    from factory.data import procedural

    seen: list[list[str]] = []
    monkeypatch.setattr(procedural, "main", lambda argv: seen.append(list(argv)) or 0)
    for overrides, want in (([], "0"), (["city_seed=7"], "7")):
        cfg = load_config(DemoConfig, "configs/demo.yaml", overrides)
        Demo(cfg, tmp_path / want, set()).stage_city()
        assert seen[-1][seen[-1].index("--seed") + 1] == want
        assert cfg.seed == 0
    paper = load_config(DemoConfig, "configs/paper.yaml", ["city_seed=3"])
    assert paper.dg_classical and paper.dg_oracle and len(paper.dg_seeds) >= 5 and paper.city_seed == 3


def test_weather_claim_is_checked_against_the_numbers():
    from demo.report import weather_lines

    def stats(**b):
        return {"weather_stats": {w: {"generated": {"brightness": v, "contrast": 0.1},
                                      "real": {"brightness": v, "contrast": 0.1}} for w, v in b.items()}}  # fmt: skip

    assert "**holds**" in "\n".join(weather_lines(stats(clear=0.4, fog=0.7, snow=0.7, night=0.1)))
    assert "**does not hold**" in "\n".join(weather_lines(stats(clear=0.4, fog=0.38, snow=0.7, night=0.1)))
    assert weather_lines({}) == []


def test_conditioning_table_has_the_five_columns_and_checks_the_claim(tmp_path):
    from demo.report import compare_lines

    def row(miou, text=0.4, lpips=0.1):
        return {"scores": {"miou": miou, "pixel_acc": 0.7, "si_log": 40.0, "fd": 12.5, "lpips": lpips, "text": text},
                "grid": str(tmp_path / f"grid_{miou}.png")}  # fmt: skip

    labels = {
        "miou": "mIoU",
        "si_log": "SILog",
        "fd": "FD(judge)",
        "lpips": "LPIPS(judge)",
        "text": "weather acc",
    }
    cmp = {
        "columns": [
            {"key": k, "label": v, "higher_is_better": k not in ("si_log", "fd")} for k, v in labels.items()
        ],
        "rows": {
            "real reference": {"scores": {**row(0.5)["scores"], "lpips": None, "text": None}},
            "no condition": row(0.1),
            "layout": row(0.3),
            "canny": row(0.2),
            "semseg": row(0.25),
        },  # fmt: skip
        "plot": str(tmp_path / "compare.png"),
        "settings": {
            "n_references": 8,
            "seeds": 2,
            "weather_refs": 2,
            "weathers": ["fog", "night", "rain", "snow"],
            "sampler": {"steps": 10, "scheduler": "ddim"},
            "fd_real": {"split": "train", "n": 96},
        },  # fmt: skip
    }
    text = "\n".join(compare_lines(cmp, ["layout", "canny", "semseg"], lambda p: str(p)))
    assert (
        "| conditioning | mIoU ↑ | pixel acc | SILog ↓ | FD(judge) ↓ | LPIPS(judge) ↑ | weather acc ↑ |"
        in text
    )
    assert "| neural layout (LUMEN) | 0.300 | 0.700 | 40.0 | 12.5 | 0.100 | 0.400 |" in text
    assert "| real reference | 0.500 | 0.700 | 40.0 | 12.5 | - | - |" in text
    assert "**holds**" in text and "steps of 0.10" in text
    cmp["rows"]["canny"] = row(0.35)
    assert "**does not hold**" in "\n".join(compare_lines(cmp, ["layout", "canny"], lambda p: str(p)))


def _results(avg_ci: tuple[float, float], cs_ci: tuple[float, float]) -> dict:
    cell = lambda ci: {"diff": (ci[0] + ci[1]) / 2, "ci": list(ci), "n": 6}  # noqa: E731
    brightness = lambda b: {"generated": {"brightness": b}}  # noqa: E731
    return {
        "compare": {"rows": {"layout": {"scores": {"miou": 0.28}}, "canny": {"scores": {"miou": 0.16}}}},
        "base": {
            "weather_stats": {"clear": brightness(0.4), "fog": brightness(0.6), "night": brightness(0.1)}
        },
        "dg": {"intervals": {"real + LUMEN": {"Avg": cell(avg_ci), "CS": cell(cs_ci)}}},
        "multitask": {"intervals": {"real + LUMEN": {"mDS": cell((-7.6, -2.5))}}},
    }


def test_verdicts_compares_runs_claim_by_claim_and_fails_on_a_flip(tmp_path, capsys):
    from demo.report import claims
    from demo.verdicts import main as verdicts

    got = claims(_results((0.7, 3.9), (-7.8, -0.1)))
    assert got["layout alignment above Canny"][0] == "holds"
    assert got["weather steering of the base model"][0] == "holds"
    assert got["DG: real + LUMEN above real on the ACDC average"] == (
        "holds",
        "difference +2.3 [95% CI +0.7, +3.9], 6 paired seeds",
    )
    assert got["DG: real + LUMEN clear weather (CS) not below real"][0] == "does not hold"
    assert got["multi-task: real + LUMEN above real on mDS"][0] == "does not hold"
    runs = {}
    for name, avg in (("a", (0.7, 3.9)), ("b", (0.2, 4.1)), ("c", (-0.5, 3.0))):
        (tmp_path / name / "stages").mkdir(parents=True)
        for stage, result in _results(avg, (-7.8, -0.1)).items():
            (tmp_path / name / "stages" / f"{stage}.json").write_text(json.dumps({"result": result}))
        runs[name] = tmp_path / name
    assert verdicts([str(runs["a"]), str(runs["b"])]) == 0  # other numbers, the same verdicts
    assert verdicts([str(runs["a"]), str(runs["c"])]) == 1  # the DG claim turns undecided
    row = [line for line in capsys.readouterr().out.splitlines() if "ACDC average" in line][-1]
    assert row.endswith("| **no** |") and "undecided" in row
