"""The generation job: every (reference, variant) -> one synthetic sample, exactly once.

Usage::

    python -m factory.jobs.generate --config configs/generate/procedural.yaml [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python -m factory.jobs.generate --config configs/generate/procedural.yaml out=/abs/path

One concern per module: ``config`` (GenerateConfig, FaultsConfig), ``synthesizers`` (which
synthesizer: LUMEN or a plugin), ``stage`` (GenerateStage: a shard -> tar + manifest part),
``faults`` (fault drills wrapped around the synthesizer), ``card`` (dataset card, contact
sheet), ``run`` (the driver), ``__main__`` (the CLI).
"""

from factory.jobs.generate.config import FaultsConfig, GenerateConfig
from factory.jobs.generate.run import JobSummary, run
from factory.jobs.generate.stage import GenerateStage, ShardResult, plan_items
from factory.jobs.plan import list_references

__all__ = [
    "FaultsConfig",
    "GenerateConfig",
    "GenerateStage",
    "JobSummary",
    "ShardResult",
    "list_references",
    "main",
    "plan_items",
    "run",
]


def main(argv=None) -> int:
    """``python -m factory.jobs.generate`` (see ``factory.jobs.generate.__main__``)."""
    from factory.jobs.generate.__main__ import main as _main

    return _main(argv)
