"""Run these tests single-threaded: on the shared 2-core machines, two OpenMP threads competing
with other processes spin-wait and made a tiny U-Net call ~80x slower (10 s vs 0.12 s)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
