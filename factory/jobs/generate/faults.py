"""Fault drills: a wrapper around the synthesizer, so the production path has no test branches.

Each drill makes the job meet a real failure at a real place: a CUDA out-of-memory error in the
synthesizer call (the stage halves its batch), a NaN image (the quality gate rejects it and
retries with a new seed), a worker process killed mid-shard (the executor replaces it and the
shard is redone), a slow call (time for a test to kill the driver mid-job).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from factory.data.sample import Sample
from factory.jobs.generate.config import FaultsConfig
from factory.storage import Store
from factory.synth.synthesizer import SynthOutput, WorkItem


class FaultDrill:
    """``synth`` with the configured faults injected; everything else passes through."""

    def __init__(self, synth: Any, faults: FaultsConfig, out: Store):
        self.synth = synth
        self.faults = faults
        self.out = out
        self.items_seen = 0

    def __getattr__(self, name: str) -> Any:  # signature, preview, needs_labels, ...
        return getattr(self.synth, name)

    def setup(self) -> FaultDrill:
        return self

    def __call__(self, items: Sequence[WorkItem], *, samples: Sequence[Sample]) -> list[SynthOutput]:
        f = self.faults
        if f.oom_above_batch and len(items) > f.oom_above_batch:
            import torch

            raise torch.OutOfMemoryError(f"simulated out of memory at batch {len(items)}")
        if f.delay_s:
            time.sleep(f.delay_s)
        outputs = [self._nan(o) for o in self.synth(items, samples=samples)]
        self.items_seen += len(items)
        self._maybe_die()
        return outputs

    def _nan(self, o: SynthOutput) -> SynthOutput:
        """What the real Synthesizer returns for a NaN decode, for the keys in ``nan_keys``."""
        if o.key not in self.faults.nan_keys or o.image is None:
            return o
        bad = int(np.asarray(o.image).size)
        return dataclasses.replace(
            o, image=None, nonfinite=bad, error=f"nonfinite: {bad} values are NaN (fault injection)"
        )

    def _maybe_die(self) -> None:
        """SIGKILL this worker's own process once per output folder (the first to get here: the
        marker ``<out>/.fault-killed`` is created exclusively)."""
        n = self.faults.kill_after_items
        if not n or self.items_seen < n:
            return
        if self.out.create(".fault-killed", f"{os.uname().nodename}:{os.getpid()}".encode()):
            os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FaultDrill"]
