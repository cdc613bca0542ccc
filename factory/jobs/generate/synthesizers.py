"""Which synthesizer the job runs: the LUMEN Synthesizer, or a plugin named in the config."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from factory.data.sample import Sample
from factory.jobs.generate.config import GenerateConfig
from factory.synth.synthesizer import SynthOutput, WorkItem


class SynthesizerLike(Protocol):
    """What the job needs from a synthesizer (``factory.synth.Synthesizer`` fits): ``setup()``
    loads models once; ``__call__(items, samples=...)`` returns one ``SynthOutput`` per item, in
    order, with ``image`` None and ``error`` set for a sample it could not make. Optional:
    ``signature()`` (recorded in each sample's metadata), ``preview(sample)`` (an RGB picture of
    the condition for the contact sheet) and ``needs_labels`` (the condition reads labels)."""

    def setup(self) -> Any: ...

    def __call__(self, items: Sequence[WorkItem], *, samples: Sequence[Sample]) -> list[SynthOutput]: ...


def build_synthesizer(cfg: GenerateConfig) -> SynthesizerLike:
    """Resolve ``cfg.synthesizer`` and load its models (in the worker that will use them).

    "lumen": ``Synthesizer.from_config`` with the job's batch size (a call with a batch's items
    runs them as one batch, as the out-of-memory fallback expects) and the job seed (an untrained
    ControlNet gets the same weights in every worker). Otherwise ``module:factory`` or
    ``file.py:factory`` called with the job config.
    """
    if cfg.synthesizer == "lumen":
        from factory.synth.synthesizer import Synthesizer

        synth_cfg = dataclasses.replace(cfg.synth, batch_size=cfg.batch_size)
        return Synthesizer.from_config(synth_cfg, seed=cfg.seed)
    module_name, attr = cfg.synthesizer.split(":")
    if module_name.endswith(".py"):  # a file (relative to the working directory)
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"synthesizer: {path} does not exist (fix: a path relative to {Path.cwd()})"
            )
        spec = importlib.util.spec_from_file_location(f"_lumen_synth_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"synthesizer: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    synth = getattr(module, attr)(cfg)
    synth.setup()
    return synth


__all__ = ["SynthesizerLike", "build_synthesizer"]
