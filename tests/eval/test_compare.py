"""python -m factory.eval.compare end to end: briefly trained ControlNets (layout, Canny, disparity,
GT semseg), sampled through the Synthesizer; the JSON has the five columns for every row, in range."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from factory.config import ConfigError, from_dict
from factory.data.cityscapes import list_cityscapes, load_sample
from factory.eval.compare import COLUMNS, CompareConfig, main
from factory.layout import LayoutConfig, SDUNetBackbone, fit_layout_pca
from factory.models import load_components
from factory.train.controlnet import ControlNetTrainConfig, train_controlnet

REPO = Path(__file__).resolve().parents[2]
KINDS = ("layout", "canny", "disparity", "semseg")


@pytest.fixture(scope="module")
def setup(city_root, tiny_base, tiny_judges, tmp_path_factory) -> dict:
    """A tiny base model, one ControlNet per condition after 2 training steps, tiny judges."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compare")
    base = tiny_base
    components = load_components(str(base))
    cs = city_root / "cityscapes"
    train = [load_sample(r) for r in list_cityscapes(cs, "train").refs]
    layout = LayoutConfig(model=str(base), n_components=4, pca_samples=300, micro_batch=1, device="cpu")
    fit_layout_pca(SDUNetBackbone(components, micro_batch=1), train, layout).save(root / "pca")
    folders = {}
    for kind in KINDS:
        condition: dict = {"kind": kind, "device": "cpu"}
        if kind == "layout":
            condition["layout"] = {"model": str(base), "n_components": 4, "micro_batch": 1, "device": "cpu",
                                   "pca": str(root / "pca")}  # fmt: skip
        cfg = from_dict(ControlNetTrainConfig, {
            "out": str(root / f"cn_{kind}"), "base_model": str(base), "data": {"root": str(cs), "limit": 2},
            "condition": condition, "steps": 2, "batch_size": 2, "checkpoint_every": 2, "threads": 1,
            "validation": {"every": -1},
        })  # fmt: skip
        folders[kind] = train_controlnet(cfg)
    return {"folders": folders, "judges": tiny_judges, "data": cs, "root": root}


def argv(setup, out: Path, *extra: str) -> list[str]:
    j = setup["judges"]
    return [
        *(f"--controlnet={k}={f}" for k, f in setup["folders"].items()),
        "--data", str(setup["data"]), "--out", str(out), "--n", "2", "--seeds", "2", "--weather-refs", "1",
        "--weathers", "fog", "night", "--steps", "2", "--guidance", "1.0", "--prompts", str(REPO / "configs/prompts/procedural.yaml"),
        "--segmenter", str(j / "seg"), "--depth-judge", str(j / "depth"), "--weather-judge", str(j / "weather"),
        "--threads", "1", *extra,
    ]  # fmt: skip


def check_ranges(scores: dict, generated: bool) -> None:
    assert set(COLUMNS) <= set(scores)
    assert 0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["pixel_acc"] <= 1.0
    assert math.isfinite(scores["si_log"]) and scores["si_log"] >= 0
    assert math.isfinite(scores["fd"]) and scores["fd"] >= -1e-6
    if generated:
        assert 0.0 <= scores["lpips"] <= 4.0
        assert 0.0 <= scores["text"] <= 1.0


def test_compare_end_to_end(setup, tmp_path, capsys):
    out = tmp_path / "cmp"
    report = main(argv(setup, out))
    data = json.loads((out / "compare.json").read_text())
    assert data["rows"].keys() == {"real reference", "no condition", *KINDS}
    labels = {c["key"]: c["label"] for c in data["columns"]}
    assert labels == {"miou": "mIoU", "si_log": "SILog", "fd": "FD(judge)", "lpips": "LPIPS(judge)",
                      "text": "weather acc"}  # fmt: skip
    for name, row in data["rows"].items():
        check_ranges(row["scores"], generated=name != "real reference")
        if name in KINDS:
            assert row["condition"] == name and Path(row["grid"]).is_file()
    real = data["rows"]["real reference"]["scores"]
    assert real["lpips"] is None and real["text"] is None
    assert all(row["scores"]["lpips"] > 0 for name, row in data["rows"].items() if name != "real reference")
    assert Path(data["plot"]).is_file() and data["settings"]["n_references"] == 2
    printed = capsys.readouterr().out
    assert "FD(judge)" in printed and "LPIPS(judge)" in printed and "disparity" in printed
    assert report["table"] == data["table"]


def test_real_instruments_replace_the_judges_and_rename_the_columns(setup, tmp_path):
    from transformers import CLIPConfig, CLIPModel, SegformerConfig, SegformerForSemanticSegmentation

    from factory.eval.diversity import LPIPSAlex
    from factory.eval.fid import InceptionV3FID

    torch.manual_seed(0)
    torch.save(InceptionV3FID().state_dict(), tmp_path / "inception.pth")
    torch.save(
        {f"features.{k}": v for k, v in LPIPSAlex().features.state_dict().items()}, tmp_path / "alex.pth"
    )
    seg_cfg = SegformerConfig(num_labels=19, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                              num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=8)  # fmt: skip
    SegformerForSemanticSegmentation(seg_cfg).save_pretrained(tmp_path / "seg")
    text = {"vocab_size": 679, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 677, "eos_token_id": 678,
            "pad_token_id": 678}  # fmt: skip
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(
        tmp_path / "clip"
    )
    for f in (REPO / "models/procedural-base-v1/tokenizer").iterdir():
        (tmp_path / "clip" / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "real"
    one = [a for a in argv(setup, out) if not a.startswith("--controlnet=")]
    main([f"--controlnet=canny={setup['folders']['canny']}", *one, "--no-unconditioned",
          "--fid-inception", str(tmp_path / "inception.pth"), "--lpips-backbone", str(tmp_path / "alex.pth"),
          "--seg-model", str(tmp_path / "seg"), "--clip", str(tmp_path / "clip")])  # fmt: skip
    data = json.loads((out / "compare.json").read_text())
    assert data["rows"].keys() == {"real reference", "canny"}
    assert [c["label"] for c in data["columns"]] == ["mIoU", "SILog", "FID", "LPIPS", "CLIP score"]
    assert all(c["real_instrument"] for c in data["columns"] if c["key"] != "si_log")
    s = data["rows"]["canny"]["scores"]
    assert 0 <= s["miou"] <= 1 and s["fd"] >= -1e-3 and s["lpips"] >= 0 and 0 <= s["text"] <= 100


def test_measure_is_the_one_column_case_through_the_synthesizer(setup, tmp_path):
    from factory.train import measure

    out = tmp_path / "measure"
    measure.main(["--controlnet", str(setup["folders"]["semseg"]), "--data", str(setup["data"]), "--out", str(out),
                  "--segmenter", str(setup["judges"] / "seg"), "--n", "2", "--steps", "1", "--threads", "1"])  # fmt: skip
    report = json.loads((out / "measure.json").read_text())
    assert report["condition"] == "semseg" and set(report["scores"]) == {"real_reference", "layout", "zeroed"}
    for s in report["scores"].values():
        assert 0 <= s["miou"] <= 1 and 0 <= s["pixel_acc"] <= 1
    assert Path(report["grid"]).is_file()


def test_config_errors_name_the_field(setup, tmp_path):
    base = {"controlnets": {"x": tmp_path}, "data": tmp_path, "out": tmp_path}
    with pytest.raises(ConfigError, match="seeds"):
        CompareConfig(**base, seeds=1)
    with pytest.raises(ConfigError, match="weathers"):
        CompareConfig(**base, weathers=["dawn"])
    CompareConfig(**base, weathers=["dawn"], clip=tmp_path)  # CLIP scores any prompt
    with pytest.raises(SystemExit):
        main(["--controlnet", "no-equals-sign", "--data", "d", "--out", "o"])
