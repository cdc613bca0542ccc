"""Load ahead: decode the next batch in threads while the model works on this one.

Why: one core decodes a 2048x1024 PNG in ~35 ms, so a serial loader would hold a GPU worker
near 20 img/s. OpenCV releases the GIL while decoding, so a few threads keep the GPU fed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any


def load_ahead(
    items: Sequence[Any],
    batch_size: int,
    pool: Executor,
    load: Callable[[Any], Any],
    key: Callable[[Any], str],
) -> Iterator[list[tuple[Any, Any]]]:
    """``items`` in batches of ``batch_size``, each item with ``load(item)``'s result, in order.

    Batch i + 1 is loaded in ``pool`` while the caller computes on batch i, so decoding images
    overlaps the model. Items of a batch with the same ``key`` share one load (a reference's
    variants share its decoded sample).
    """
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

    def submit(batch: Sequence[Any]) -> dict[str, Future]:
        futures: dict[str, Future] = {}
        for item in batch:
            if key(item) not in futures:
                futures[key(item)] = pool.submit(load, item)
        return futures

    ahead = submit(batches[0]) if batches else {}
    for i, batch in enumerate(batches):
        current, ahead = ahead, (submit(batches[i + 1]) if i + 1 < len(batches) else {})
        yield [(item, current[key(item)].result()) for item in batch]


__all__ = ["load_ahead"]
