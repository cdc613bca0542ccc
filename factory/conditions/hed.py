"""HED (holistically-nested edge detection) as a small torch module, for the HED baseline condition.

A VGG-style trunk of five convolution stages (2, 2, 3, 3, 3 convs; 64..512 channels; max-pool
between stages). Each stage has a 1x1 side projection to one edge logit map; the maps are
upsampled to the input size, averaged and squashed by a sigmoid. The parameter names
(``norm``, ``block{i}.convs.{j}``, ``block{i}.projection``) follow the widely used Apache-2.0 HED
annotator checkpoint for ControlNet, so that state dict loads directly; tests use random weights.
Input: RGB in [0, 255] as float, (B, 3, H, W). Output: (B, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from factory.conditions.base import ConditionError

STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class HEDStage(nn.Module):
    """``n`` 3x3 conv + ReLU layers and a 1x1 side projection to one edge map."""

    def __init__(self, cin: int, cout: int, n: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1) for i in range(n)])
        self.projection = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned input offset
        for i, (cin, cout, n) in enumerate(STAGES, start=1):
            self.add_module(f"block{i}", HEDStage(cin, cout, n))

    def forward(self, rgb255: torch.Tensor) -> torch.Tensor:
        size = rgb255.shape[-2:]
        h = rgb255 - self.norm
        sides = []
        for i in range(1, len(STAGES) + 1):
            if i > 1:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h, side = getattr(self, f"block{i}")(h)
            sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(sides).mean(dim=0))


def load_hed(path: str | Path) -> HEDNet:
    """A ``HEDNet`` from a state dict file (.safetensors, or a torch .pth/.pt of tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise ConditionError(
            f"{path}: HED weights file missing; fix: set hed_weights to a local HED state dict "
            "(e.g. the ControlNet annotator's ControlNetHED.pth)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConditionError(f"{path}: cannot read HED weights ({e}); fix: re-export the state dict") from e
    net = HEDNet()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConditionError(
            f"{path}: not a HED state dict (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
            "fix: use weights saved from factory.conditions.HEDNet or the ControlNetHED annotator"
        )
    return net.eval()
