"""Per-sample seeds: a stable hash of (job seed, source key, variant, attempt).

Python's ``hash`` is salted per process, so it would give a different image on every actor.
SHA-256 over an unambiguous encoding is the same everywhere, which is what makes a sample
identical whichever actor makes it, in whatever batch and order.

The PCA's vector sampler has its own stable hash (``factory.layout.pca.stable_hash``): another
byte formula, pinned by the PCAs already fitted, as this one is by the datasets already made.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # fits a signed int64 (torch.Generator.manual_seed, Parquet int64)


def sample_seed(job_seed: int, source_key: str, variant: str, attempt: int = 0) -> int:
    """The seed of one sample. ``attempt`` > 0 gives the new seed of a quality retry.

    Fields are joined with a separator that cannot occur in a key (keys are checked elsewhere)
    and their lengths, so ("a_b", "c") and ("a", "b_c") never collide by construction.
    """
    if isinstance(job_seed, bool) or not isinstance(job_seed, int):
        raise TypeError(f"job_seed must be an int, got {job_seed!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
    parts = [str(job_seed), source_key, variant, str(attempt)]
    payload = "\x1f".join(f"{len(p)}:{p}" for p in parts).encode("utf-8")
    digest = hashlib.sha256(payload).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


__all__ = ["SEED_BITS", "sample_seed"]
