"""The multi-task network: one SegFormer (MiT) encoder shared by semantic, depth and 3D-box heads.

The encoder is mmsegmentation's ``MixVisionTransformer`` (the SegFormer backbone the semantic
benchmark trains), built directly from its class: this package needs no registry. Its four
stages (strides 4, 8, 16, 32) are fused the SegFormer way - project each to one width,
upsample to stride 4, concatenate, mix - and three light heads read the fused map:

- semantic: 19 Cityscapes trainIds (cross-entropy, 255 ignored);
- depth: log metres per pixel (L1 on log depth over pixels with a valid disparity);
- 3D boxes: CenterNet - one heatmap per box class (penalty-reduced focal loss) and the 8
  regression channels of ``geometry.REG_DIMS`` read at object centres (L1).

Outputs are at stride 4; evaluation upsamples semantics and depth to the label resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from downstream.checkpoints import install_mmengine_loader
from downstream.segformer.labels import IGNORE_INDEX, NUM_CLASSES

from .geometry import REG_DIMS

STRIDE = 4  # output stride of every head (MiT's first stage)


@dataclass
class ModelConfig:
    """MiT encoder size (defaults: MiT-b0) and the fused width; ``pretrained`` is an MiT
    checkpoint path (mmseg's ImageNet MiT weights) or null for random initialisation."""

    embed_dims: int = 32
    num_layers: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_heads: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    channels: int = 256
    pretrained: str | None = None

    def __post_init__(self) -> None:
        from factory.config import check

        check(self.embed_dims > 0, "model.embed_dims", f"must be positive, got {self.embed_dims}")
        check(len(self.num_layers) == 4, "model.num_layers", "needs 4 entries (one per MiT stage)")
        check(len(self.num_heads) == 4, "model.num_heads", "needs 4 entries (one per MiT stage)")
        check(self.channels > 0, "model.channels", f"must be positive, got {self.channels}")


def _head(c_in: int, c_out: int, hidden: int, bias: float = 0.0) -> nn.Sequential:
    out = nn.Conv2d(hidden, c_out, 1)
    assert out.bias is not None  # Conv2d's bias=True default
    nn.init.constant_(out.bias, bias)
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(inplace=True), out)


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_box_classes: int = 1):
        super().__init__()
        from mmseg.models.backbones import MixVisionTransformer

        if cfg.pretrained and not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(
                f"model.pretrained: {cfg.pretrained} does not exist (fix: download mmseg's MiT ImageNet "
                "checkpoint for this size there, or set model.pretrained=null to start from random weights)"
            )
        init_cfg = dict(type="Pretrained", checkpoint=cfg.pretrained) if cfg.pretrained else None
        install_mmengine_loader()  # mmengine reads the pretrained file with the safe loader
        self.encoder = MixVisionTransformer(
            embed_dims=cfg.embed_dims,
            num_layers=list(cfg.num_layers),
            num_heads=list(cfg.num_heads),
            init_cfg=init_cfg,
        )
        self.encoder.init_weights()
        widths = [cfg.embed_dims * h for h in cfg.num_heads]
        c = cfg.channels
        self.project = nn.ModuleList(nn.Conv2d(w, c, 1) for w in widths)
        self.fuse = nn.Sequential(
            nn.Conv2d(4 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        hidden = max(32, c // 4)
        self.semantic = nn.Conv2d(c, NUM_CLASSES, 1)
        self.depth = _head(c, 1, hidden, bias=2.5)  # exp(2.5) ~ 12 m: a sensible first guess
        # heatmap bias: sigmoid(-2.19) = 0.1, CenterNet's prior that keeps early focal loss stable
        self.heatmap = _head(c, num_box_classes, hidden, bias=-2.19)
        self.box_reg = _head(c, REG_DIMS, hidden)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(image)
        size = feats[0].shape[-2:]
        fused = [
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
            for i, (p, f) in enumerate(zip(self.project, feats))
        ]
        x = self.fuse(torch.cat(fused, 1))
        return {
            "semantic": self.semantic(x),
            "log_depth": self.depth(x)[:, 0],
            "heatmap": self.heatmap(x),
            "box_reg": self.box_reg(x),
        }


@dataclass
class LossWeights:
    semantic: float = 1.0
    depth: float = 1.0
    heatmap: float = 1.0
    box_reg: float = 1.0

    def __post_init__(self) -> None:
        from factory.config import check

        for name in ("semantic", "depth", "heatmap", "box_reg"):
            check(getattr(self, name) >= 0, f"loss.{name}", "loss weights must be >= 0")


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of object centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_weight = (1 - target) ** 4
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p**2 * neg_weight * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], w: LossWeights
) -> dict[str, torch.Tensor]:
    """Per-task losses and their weighted sum (``total``); targets at input resolution."""
    size = batch["trainids"].shape[-2:]
    seg_logits = F.interpolate(out["semantic"], size=size, mode="bilinear", align_corners=False)
    l_seg = F.cross_entropy(seg_logits, batch["trainids"], ignore_index=IGNORE_INDEX)

    depth = batch["depth"]
    log_pred = F.interpolate(out["log_depth"][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    valid = depth > 0
    l_depth = (
        (log_pred[valid] - torch.log(depth[valid])).abs().mean() if valid.any() else log_pred.sum() * 0.0
    )

    l_hm = focal_heatmap_loss(out["heatmap"], batch["heatmap"])
    b, c, h, w_ = out["box_reg"].shape
    flat = out["box_reg"].reshape(b, c, h * w_)
    idx = batch["box_index"][:, None, :].expand(b, c, batch["box_index"].shape[1])
    pred = flat.gather(2, idx).permute(0, 2, 1)  # (B, K, REG_DIMS)
    mask = batch["box_mask"][..., None]
    l_reg = ((pred - batch["box_reg"]).abs() * mask).sum() / (mask.sum() * c).clamp(min=1.0)

    total = w.semantic * l_seg + w.depth * l_depth + w.heatmap * l_hm + w.box_reg * l_reg
    return {"total": total, "semantic": l_seg, "depth": l_depth, "heatmap": l_hm, "box_reg": l_reg}
