"""A tiny real condition for training tests (luminance, 1 channel) and a runner script.

The trainer takes any ConditionProvider; tests use this one so they exercise the training loop
without depending on the neural-layout pipeline (tested in tests/layout and tests/conditions).
"""

from __future__ import annotations

import sys

import numpy as np
import torch


class LumaCondition:
    """(B, 1, H, W) luminance in [0, 1] of each sample's image: a real, cheap condition."""

    kind = "luma"
    channels = 1
    needs_labels = False

    def signature(self) -> dict:
        return {"kind": self.kind, "channels": self.channels}

    def __call__(self, samples) -> torch.Tensor:
        x = np.stack([s.image for s in samples]).astype(np.float32) @ np.array(
            [0.299, 0.587, 0.114], np.float32
        )
        return torch.from_numpy(x / 255.0)[:, None]


if __name__ == "__main__":  # python tests/train/helpers.py <config.yaml>: the CLI with LumaCondition
    from factory.config import load_config
    from factory.train.controlnet import ControlNetTrainConfig, train_controlnet

    torch.set_num_threads(2)
    train_controlnet(load_config(ControlNetTrainConfig, sys.argv[1], sys.argv[2:]), provider=LumaCondition())
