"""``--cfg-options`` keys are checked against the loaded config before they are merged.

Why: mmengine's ``Config.merge_from_dict`` creates any key it is given, so a misspelt key
(``train_cfg.max_iter=10``, ``trian_dataloader.batch_size=2``) is accepted, nothing reads it,
and the run goes on with the value it had - silently. Here a key must exist in the loaded
config; the error names it and the closest key that does exist.

New keys are allowed only where mmengine's own conventions create them, and each is still
checked as far as it can be before the run:
- a top-level key the Runner reads (``launcher``, ``experiment_name``, ``auto_scale_lr``, ...):
  the Runner's constructor arguments (``Runner.from_cfg`` passes ``cfg.get(name)`` for each)
  and the few keys it reads from the config directly;
- a new argument in a dict with ``type``: the registry builds ``type(**other keys)``, and
  mmengine's own docs add ``model.backbone.with_cp=True`` this way. When the type resolves to a
  class whose ``__init__`` lists its arguments (no ``**kwargs``), the key must be one of them;
  a class that takes ``**kwargs`` gets it unchecked here (its base class refuses a name nobody
  takes when the runner builds it);
- a new key of ``randomness``, which must be an argument of ``Runner.set_randomness``;
- a new entry of ``default_hooks``, whose keys are hook names of the user's choosing.
Not supported: mmengine's ``_delete_`` key (replacing a whole dict from the command line).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from factory.config import ConfigError

# Top-level keys the Runner reads besides its constructor's arguments (with self.cfg.get).
RUNNER_CFG_KEYS = ("model_wrapper_cfg", "compile", "activation_checkpointing", "efficient_conv_bn_eval")
# Mappings whose keys are names of the user's choosing: default_hooks maps a name to a hook.
OPEN_MAPPINGS = ("default_hooks",)


def _arguments(fn: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``fn`` (a class: its constructor) takes, or None when it takes
    ``**kwargs`` (any name)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


class _Registries:
    """Resolves a config's ``type`` to the class mmseg's registries would build (or None)."""

    def __init__(self, cfg: Mapping[str, Any]):
        import mmseg.registry
        from mmengine.registry import Registry, init_default_scope

        init_default_scope(cfg.get("default_scope", "mmseg"))
        for mod in (cfg.get("custom_imports") or {}).get("imports", []):
            importlib.import_module(mod)  # registers the project's datasets, transforms, hooks
        self.registries = [r for r in vars(mmseg.registry).values() if isinstance(r, Registry)]

    def resolve(self, type_: Any) -> type | None:
        """The class named by ``type_``; None when no registry or more than one class has it."""
        if isinstance(type_, type):
            return type_
        if not isinstance(type_, str):
            return None
        found = {cls for r in self.registries if (cls := r.get(type_)) is not None}
        return found.pop() if len(found) == 1 else None


def _problem(tree: Mapping[str, Any], key: str, runner_keys: set[str], registries: _Registries) -> str | None:
    """Why ``--cfg-options key=...`` would set nothing the run reads; None when it would."""
    from mmengine.runner import Runner

    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if isinstance(node, list | tuple) and part.isdigit():  # mmengine's list-index keys: a.0.b
            if int(part) >= len(node):
                return f"{where} has {len(node)} items, so {key} names none of them"
            node = node[int(part)]
            continue
        if not isinstance(node, Mapping):
            shown = repr(node) if len(repr(node)) <= 40 else type(node).__name__
            return f"{where} is {shown} in the config, not a dict, so {key} cannot be set under it"
        if part in node:
            node = node[part]
            continue
        # a key the config does not have: allowed only where mmengine's conventions make one
        if (i == 0 and part in runner_keys) or where in OPEN_MAPPINGS:
            return None
        takes: list[str] | None = [str(k) for k in node]
        owner = where
        if "type" in node:
            cls = registries.resolve(node["type"])
            takes = _arguments(cls) if cls is not None else None
            owner = f"{where} ({getattr(cls, '__name__', node['type'])})"
        elif where == "randomness":
            takes = _arguments(Runner.set_randomness)
            owner = "randomness (Runner.set_randomness)"
        if takes is None or part in takes:
            return None  # a constructor argument: passed on when the runner builds it
        close = difflib.get_close_matches(part, sorted(set(takes) | {str(k) for k in node}), n=1)
        hint = f"did you mean {'.'.join([*parts[:i], close[0]])}?" if close else "check the spelling"
        at = f"{owner} has no key {part}" if owner else f"the config has no key {part}"
        return f"unknown key {key}: {at} ({hint})"
    return None


def check_cfg_options(cfg: Any, options: Mapping[str, Any], source: str = "<config>") -> None:
    """Refuse ``--cfg-options`` keys that the loaded config ``cfg`` does not have (see the
    module docstring for the new keys mmengine's conventions allow), naming the closest key."""
    from mmengine.runner import Runner

    tree = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg  # an mmengine Config is no Mapping
    runner_keys = (set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"}) | set(
        RUNNER_CFG_KEYS
    )
    registries = _Registries(tree)
    for key in options:
        problem = _problem(tree, key, runner_keys, registries)
        if problem is not None:
            raise ConfigError(f"{source}: --cfg-options {problem}")


__all__ = ["check_cfg_options"]
