"""An infinite sampler that honours the real:synthetic ratio of a ``MixedDataset`` at every step.

A shuffled concatenation only meets the ratio on average (and a public anchor's mix silently
drew nothing from its second source). Here the source of draw ``t`` follows a fixed schedule:
draw ``t`` is synthetic exactly when ``floor((t+1) r) > floor(t r)``, so after ``n`` draws
``floor(n r)`` were synthetic. Within each source, indices come from its own reshuffled
permutation (every sample once per pass). Each distributed rank runs the whole schedule with
its own seed, so each rank's stream keeps the ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler


def is_synth_draw(t: int, ratio: float) -> bool:
    """Whether draw ``t`` (0-based) of the schedule takes a synthetic sample."""
    return math.floor((t + 1) * ratio + 1e-9) > math.floor(t * ratio + 1e-9)


@DATA_SAMPLERS.register_module()
class MixedSampler(Sampler):
    """Yields global indices into a ``MixedDataset`` forever, following its ``ratio``."""

    def __init__(self, dataset, shuffle: bool = True, seed: int | None = None) -> None:
        for attr in ("ratio", "cumulative"):
            if not hasattr(dataset, attr):
                raise TypeError(
                    f"MixedSampler needs a MixedDataset (with .{attr}); got {type(dataset).__name__}"
                )
        self.dataset = dataset
        self.shuffle = shuffle
        self.rank, self.world_size = get_dist_info()
        self.seed = sync_random_seed() if seed is None else seed
        self.n_real = dataset.cumulative[0]
        self.n_synth = dataset.cumulative[1] - dataset.cumulative[0]

    def _stream(self, n: int, offset: int, rng: np.random.Generator) -> Iterator[int]:
        while True:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            for i in order:
                yield offset + int(i)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.rank])
        real = self._stream(self.n_real, 0, rng)
        synth = self._stream(self.n_synth, self.n_real, rng)
        t = 0
        while True:
            yield next(synth) if is_synth_draw(t, self.dataset.ratio) else next(real)
            t += 1

    def __len__(self) -> int:
        return self.n_real + self.n_synth

    def set_epoch(self, epoch: int) -> None:  # infinite: one stream per run
        return None
