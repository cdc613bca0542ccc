"""Text controllability: does the image show what the prompt asks for? (Table 2, TIFA)

Why: the factory's point is to re-synthesise a clear reference as fog, night, rain or snow; a
condition that pins the image too tightly leaves the prompt no say. The paper scores this with
TIFA (Hu et al. 2023), which needs a language model to turn each prompt into questions and a VQA
model to answer them on the image: **TIFA is not implemented here** (neither model is available
offline, and a stand-in would not be TIFA). Two measures of the same question instead:

- real: CLIP score (Hessel et al. 2021) with any ``transformers`` CLIP model in a local folder:
  100 * max(cos(image embedding, prompt embedding), 0) per (image, prompt), averaged; higher is
  better (w = 100 as torchmetrics' CLIPScore; Hessel et al. scale by 2.5).
- offline: weather accuracy - a small classifier trained in seconds on procedural renders of
  the five weathers (``factory.data.procedural.apply_weather``: clear, fog, night, rain, snow)
  predicts the weather of each generated image; the score is the fraction that match the
  prompted weather (chance = 1/5). Printed ``weather acc``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from factory.cli import STARTS_OVER, run_cli
from factory.config import check
from factory.data.procedural import ALL_WEATHERS

WEATHERS: tuple[str, ...] = ALL_WEATHERS  # class index -> weather name


def weather_accuracy(predicted: Sequence[str], prompted: Sequence[str]) -> float:
    """Fraction of images whose predicted weather is the prompted one."""
    if len(predicted) != len(prompted) or not predicted:
        raise ValueError(
            f"{len(predicted)} predictions for {len(prompted)} prompts: need equal, non-zero counts"
        )
    return float(np.mean([p == q for p, q in zip(predicted, prompted)]))


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> np.ndarray:
    """(N,) 100 * max(cos, 0) between row i of the image and text embeddings (N, D)."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"image {tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)} embeddings differ"
        )
    cos = F.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1)
    return (100.0 * cos.clamp_min(0.0)).numpy()


# ------------------------------------------------------------------------------------ real path

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pooled(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """CLIP score with a ``transformers`` CLIPModel and its tokenizer from a local folder.

    Images are preprocessed here in torch as CLIP's processor does (shortest side resized to the
    crop size, bicubic; centre crop; CLIP mean/std from ``preprocessor_config.json`` when present).
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: no CLIP model here (config.json missing); fix: a folder written by save_pretrained, "
                "e.g. a downloaded openai/clip-vit-base-patch32"
            )
        self.model = CLIPModel.from_pretrained(folder).eval()
        nn.Module.to(self.model, torch.device(device))  # (PreTrainedModel.to's wrapper confuses mypy)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        pre = folder / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        crop = cfg.get("crop_size", self.model.config.vision_config.image_size)
        self.crop = int(crop["height"] if isinstance(crop, dict) else crop)
        self.mean = torch.tensor(cfg.get("image_mean", _CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", _CLIP_STD)).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.folder = folder

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        s = self.crop / min(h, w)
        size = (max(self.crop, round(h * s)), max(self.crop, round(w * s)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def score(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """(N,) CLIP scores of uint8 images (N, H, W, 3) with their prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.pixel_values(images[i : i + self.batch_size]).to(self.device)
            tok = self.tokenizer(list(prompts[i : i + self.batch_size]), padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)  # fmt: skip
            img = _pooled(self.model.get_image_features(pixel_values=px))
            txt = _pooled(
                self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            )
            out.append(clip_score(img.float().cpu(), txt.float().cpu()))
        return np.concatenate(out)


# --------------------------------------------------------------------------------- offline path


@dataclass
class WeatherJudgeConfig:
    """Training recipe of the offline weather classifier (seconds on a CPU at 64x128)."""

    height: int = 64
    width: int = 128
    n_scenes: int = 40  # per weather, rendered in memory
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    width_mult: int = 16
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            check(v > 0 and v % 8 == 0, name, f"must be a positive multiple of 8, got {v}")
        for name in ("n_scenes", "steps", "batch_size"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.width_mult >= 4, "width_mult", f"must be >= 4, got {self.width_mult}")


class WeatherNet(nn.Module):
    """Four stride-2 conv blocks, then the channel means and standard deviations (weather is
    mostly global statistics: brightness, contrast, haze, streak texture) into a linear head."""

    def __init__(self, width: int = 16, classes: int = len(WEATHERS)):
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        self.body = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True))
            for a, b in zip(chans[:-1], chans[1:])
        ))  # fmt: skip
        self.head = nn.Linear(2 * chans[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], dim=1))


def render_weather_set(cfg: WeatherJudgeConfig) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.n_scenes`` procedural scenes per weather: images (N, H, W, 3) and class indices (N,)."""
    from factory.data.procedural import render_scene, weather_image

    rng = np.random.default_rng(cfg.seed)
    images, labels = [], []
    for _ in range(cfg.n_scenes):
        scene = render_scene(rng, cfg.height, cfg.width)
        for k, weather in enumerate(WEATHERS):
            images.append(weather_image(scene, weather, rng))
            labels.append(k)
    return np.stack(images), np.array(labels, np.int64)


class WeatherJudge:
    """The offline weather instrument: ``WeatherNet`` plus the config it was trained with."""

    def __init__(self, model: WeatherNet, cfg: WeatherJudgeConfig, meta: dict[str, Any] | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, cfg: WeatherJudgeConfig) -> WeatherJudge:
        """Train on uint8 images (N, H, W, 3) and weather indices (N,) into ``WEATHERS``."""
        from factory.eval.instrument import one_cycle
        from factory.quality.segmenter import augment, to_input

        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"{len(images)} images and {len(labels)} labels: need equal, non-zero counts")
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        model = WeatherNet(cfg.width_mult)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = one_cycle(opt, cfg.lr, cfg.steps)
        x_all, y_all = to_input(images), torch.from_numpy(labels)
        model.train()
        t0 = time.perf_counter()
        loss_v = float("nan")
        for _ in tqdm(range(cfg.steps), desc="weather judge", leave=False):
            idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
            x = x_all[idx].clone()
            if cfg.augment:  # generated images are blurrier and colour-shifted than renders
                x, _ = augment(x, g)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_v = float(loss.detach())
        meta = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": loss_v,
            "n_images": len(images),
        }
        return cls(model, cfg, meta)

    @classmethod
    def train_procedural(cls, cfg: WeatherJudgeConfig | None = None) -> WeatherJudge:
        """Render ``cfg.n_scenes`` scenes in each of the five weathers and train on them."""
        cfg = cfg or WeatherJudgeConfig()
        judge = cls.fit(*render_weather_set(cfg), cfg)
        judge.meta["data"] = f"procedural render_scene x{cfg.n_scenes} in {list(WEATHERS)}"
        return judge

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(B, len(WEATHERS)) softmax probabilities for uint8 RGB images (B, H, W, 3); the
        generation job's quality gate reads the prompted weather's column."""
        from factory.quality.segmenter import to_input

        x = to_input(images)
        logits = torch.cat([self.model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        return torch.softmax(logits.float(), dim=1).numpy()

    def predict(self, images: np.ndarray, batch_size: int = 32) -> list[str]:
        """The weather name predicted for each uint8 RGB image (B, H, W, 3)."""
        return [WEATHERS[int(k)] for k in self.probabilities(images, batch_size).argmax(1)]

    def save(self, path: str | Path) -> Path:
        from factory.eval.instrument import save_instrument

        return save_instrument(path, self.model, asdict(self.cfg), self.meta)

    @classmethod
    def load(cls, path: str | Path) -> WeatherJudge:
        from factory.eval.instrument import load_instrument

        state, config, meta = load_instrument(path, "weather judge")
        cfg = WeatherJudgeConfig(**config)
        model = WeatherNet(cfg.width_mult)
        model.load_state_dict(state)
        return cls(model, cfg, meta)


def main(argv: list[str] | None = None) -> int:
    """Train the offline weather judge and save it (used by make demo's judge stage)."""
    from factory.eval.instrument import train_judge_cli

    return train_judge_cli(
        argv,
        prog="python -m factory.eval.controllability",
        description="Train the offline weather judge (clear/fog/night/rain/snow on rendered scenes) in memory; writes OUT.safetensors + OUT.json.",
        judge_cls=WeatherJudge,
        config_cls=WeatherJudgeConfig,
    )


__all__ = [
    "WEATHERS",
    "ClipScorer",
    "WeatherJudge",
    "WeatherJudgeConfig",
    "WeatherNet",
    "clip_score",
    "render_weather_set",
    "weather_accuracy",
]


if __name__ == "__main__":
    sys.exit(run_cli(main, on_interrupt=STARTS_OVER))
