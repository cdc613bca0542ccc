"""Typed configuration: plain dataclasses filled from YAML, validated at the edge.

Every stage owns a small ``@dataclass`` Config. A job config is a dataclass whose fields are
those stage configs. ``load_config(JobConfig, "configs/x.yaml")`` reads the YAML, rejects
unknown keys, checks every value against the field's type hint, and then runs each
dataclass's ``__post_init__`` (where a stage checks value ranges). Every error names the full
field path (``synth.steps``), what was given and what is allowed, before any work starts.

Supported field types: bool, int, float, str, Path, Optional[X], X | None, Literal[...],
list[X], tuple[X, ...], dict[str, X] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import yaml

from factory.storage import is_uri

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of the allowed values {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        # a type hint that is a dataclass is the class itself, never an instance
        cls = cast("type[DataclassInstance]", tp)
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {value!r}")
        return _build(cls, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, f"{where}.<key>"): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        if not str(value).strip():
            # Path("") is ".": an empty value would silently mean the current folder
            raise ConfigError(f"{where}: empty path (fix: give a path, or null where the field allows none)")
        if isinstance(value, str) and is_uri(value):
            # Path("s3://b/x") is "s3:/b/x": a URI would silently become a wrong local path
            raise ConfigError(
                f"{where}: {value!r} is a URI, and this field takes a local path (fix: a local or mounted "
                "folder)"
            )
        return Path(value)
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        prefix = f"{where}." if where else ""
        # a typo is the usual cause: name the closest allowed key before listing them all
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} in {cls.__name__}{hint}; allowed keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {path} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(f"{where}.{msg}" if where and not msg.startswith(where) else msg) from None


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass ``cls`` from a plain mapping, validating every field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}")
    return _build(cls, data, "")


def set_by_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one ``a.b.c=value`` override to a nested mapping (value parsed as YAML)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a mapping")
    node[keys[-1]] = value


def config_choices(
    path: Path, config_dir: Path | None = None, suffixes: tuple[str, ...] = (".yaml", ".yml")
) -> str:
    """What a missing config path could have been (`` (...)``, to append to the error): the
    config files (``suffixes``) beside it, else in ``config_dir``.

    A wrong ``--config`` is mostly a typo or a guess at a name, so the closest file comes first
    and the folder's configs after it. A bare name (``procedural.yaml``) was meant for the tool's
    own folder, so ``config_dir`` is looked in first then, not the working folder.
    """
    folders = (config_dir, path.parent) if path.parent == Path(".") else (path.parent, config_dir)
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        names = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix in suffixes and p.is_file() and not p.name.startswith(".")
        )
        if not names:
            continue
        close = difflib.get_close_matches(path.name, names, n=1)
        hint = f"did you mean {folder / close[0]}? " if close else ""
        return f" ({hint}configs in {folder}/: {', '.join(names)})"
    where = f"{path.parent}/" + (f" or {config_dir}/" if config_dir is not None else "")
    return f" (no {'/'.join(suffixes)} configs in {where})"


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    config_dir: str | Path | None = None,
) -> T:
    """Read YAML at ``path`` (optional), apply ``key.sub=value`` overrides, validate into ``cls``.

    ``config_dir``: where configs of this kind live (e.g. ``configs/generate``); a ``path`` that
    does not exist is reported with the configs found beside it, or else in ``config_dir``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            choices = config_choices(path, Path(config_dir) if config_dir is not None else None)
            raise ConfigError(f"config file {path} does not exist{choices}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        k, v = item.split("=", 1)
        set_by_path(data, k.strip(), yaml.safe_load(v))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-safe data (Paths become strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def _is_path_type(tp: Any) -> bool:
    """``Path``, ``Path | None`` or ``Optional[Path]``."""
    if tp is Path:
        return True
    if get_origin(tp) in (Union, types.UnionType):
        return Path in get_args(tp)
    return False


def path_fields(cfg: Any, prefix: str = "") -> list[tuple[str, Path]]:
    """Every set ``Path`` field of a (nested) dataclass config as (dotted name, value).

    One walk for the checks that are about paths rather than values: where a job runs from a
    copy of the working dir (``factory.jobs.workdir``), or a recipe that must stay valid from any
    current directory (``absolute_paths``).
    """
    found: list[tuple[str, Path]] = []
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return found
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if isinstance(value, Path) and _is_path_type(hints.get(f.name)):
            found.append((name, value))
        elif dataclasses.is_dataclass(value):
            found.extend(path_fields(value, f"{name}."))
    return found


def absolute_paths(cfg: T) -> T:
    """``cfg`` with every relative ``Path`` field, and every ``str`` field naming an existing
    relative folder (a local model reference), made absolute.

    Why: what a trainer records (a ControlNet's recipe: base model, PCA, layout store) is read
    later from another current directory - a Ray job runs in an uploaded copy of the working dir
    without the git-ignored outputs/ - so a recorded relative path would point nowhere. A model
    reference that is not a local folder (``tiny``, a hub id) is kept as it is.
    """
    changes: dict[str, Any] = {}
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if isinstance(value, Path) and _is_path_type(hints.get(f.name)) and not value.is_absolute():
            changes[f.name] = value.resolve()
        elif isinstance(value, str) and value and not Path(value).is_absolute() and Path(value).is_dir():
            changes[f.name] = str(Path(value).resolve())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = absolute_paths(cast("DataclassInstance", value))
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


def check(condition: bool, field: str, message: str) -> None:
    """Range check for use in ``__post_init__``: raises ConfigError naming the field."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


__all__ = [
    "ConfigError",
    "absolute_paths",
    "check",
    "config_choices",
    "from_dict",
    "load_config",
    "path_fields",
    "set_by_path",
    "to_dict",
]
_ = typing  # typing kept imported for forward-ref evaluation in get_type_hints
