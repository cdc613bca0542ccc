"""Which synthesizer the job runs: the LUMEN Synthesizer, or a plugin named in the config."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from factory.data.sample import Sample
from factory.jobs.generate.config import GenerateConfig
from factory.synth.synthesizer import SynthOutput, WorkItem


class SynthesizerLike(Protocol):
    """What the job needs from a synthesizer (``factory.synth.Synthesizer`` fits): ``setup()``
    loads models once; ``__call__(items, samples=...)`` returns one ``SynthOutput`` per item, in
    order, with ``image`` None and ``error`` set for a sample it could not make. Optional:
    ``signature()`` (recorded in each sample's metadata), ``preview(sample)`` (an RGB picture of
    the condition for the contact sheet)."""

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
    synth = resolve_plugin(cfg.synthesizer)(cfg)
    synth.setup()
    return synth


def resolve_plugin(spec: str) -> Callable[[GenerateConfig], SynthesizerLike]:
    """The factory function ``module:f`` or ``file.py:f`` names (imported, not called): the
    driver resolves it before Ray starts, so a wrong path or name is one clear error."""
    module_name, attr = spec.split(":")
    if module_name.endswith(".py"):  # a file (relative to the working directory)
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(
                f"synthesizer: {path} does not exist (fix: a path relative to {Path.cwd()})"
            )
        spec_ = importlib.util.spec_from_file_location(f"_lumen_synth_{path.stem}", path)
        if spec_ is None or spec_.loader is None:
            raise ImportError(f"synthesizer: cannot import {path}")
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ImportError(f"synthesizer: cannot import module {module_name!r} ({e})") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AttributeError(f"synthesizer: {module_name} has no function {attr!r} (fix: check {spec!r})")
    return cast("Callable[[GenerateConfig], SynthesizerLike]", factory)


__all__ = ["SynthesizerLike", "build_synthesizer", "resolve_plugin"]
