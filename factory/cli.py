"""What every command-line tool shares: how it fails, how it stops, and what its ``--help`` lists.

Why: a newcomer's first runs fail on expected things - a typo in a config key, a dataset that
was never written, a folder another job holds. Each of those deserves one line that says what
is wrong and how to fix it (the project's errors carry the fix in their message), not a
40-line traceback that buries it. A bug - any other exception - keeps its traceback, and
``LUMEN_DEBUG=1`` shows the traceback of the expected ones too.

- ``run_cli(main, on_interrupt=...)`` is the ``if __name__ == "__main__":`` entry of every
  tool. An expected error prints ``error: <message>`` to stderr and exits with 2 (argparse's
  code for a bad command line); Ctrl-C exits with 130 (the shell's code for SIGINT) and says how
  to pick up where the tool stopped. ``main(argv)`` itself still raises: tests and the demo
  call it in-process and must see the real exception (a demo stage that failed must stop the
  demo, not return 2 to a caller that ignores it).
- ``config_help(cls)`` is the ``--help`` epilog of a tool that takes a config dataclass: every
  field as a dotted key (nested dataclasses included), with its type, default and doc.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

# The exceptions a user's input (config, data, models, a busy folder) causes, as
# "module.Class". Named, not imported: importing factory.models pulls in diffusers (seconds),
# which a tool's --help should not pay for, and an exception can only be an instance of a class
# whose module was imported already. factory must not import downstream (tests/test_layering.py);
# downstream.checkpoints.CheckpointError is a DataError, so it is covered.
EXPECTED_ERRORS = (
    "factory.config.ConfigError",
    "factory.data.sample.DataError",
    "factory.models.components.ModelError",
    "factory.jobs.lock.OutputLocked",
    "factory.jobs.plan.PlanMismatch",
    "factory.train.recipe.RecipeError",
    "factory.train.controlnet.TrainError",
    "factory.train.ship.ShipError",
    "factory.layout.backbones.LayoutError",
    "factory.layout.store.LayoutStoreError",
    "factory.conditions.base.ConditionError",
    "factory.storage.StorageError",
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "LUMEN_DEBUG"

# What Ctrl-C tells the user, for the tools that share a way of resuming.
RESUME_JOB = (
    "rerun the same command to resume: shards that verify against the manifest are kept, the rest are redone"
)
STARTS_OVER = "rerun the same command to start it again (it does not resume)"


def expected_error_types() -> tuple[type[BaseException], ...]:
    """The classes of ``EXPECTED_ERRORS`` whose modules are loaded, and FileNotFoundError.

    A tool run as ``python -m factory.train.controlnet`` is the module ``__main__``: its
    TrainError is ``__main__.TrainError`` (``sys.modules`` has no ``factory.train.controlnet``
    unless something imported it by name), so ``__main__`` counts as the module it was run as.
    """
    main = sys.modules.get("__main__")
    main_name = getattr(getattr(main, "__spec__", None), "name", None)
    found: list[type[BaseException]] = [FileNotFoundError]
    for name in EXPECTED_ERRORS:
        module, _, cls = name.rpartition(".")
        for loaded in (sys.modules.get(module), main if main_name == module else None):
            if loaded is not None and hasattr(loaded, cls):
                found.append(getattr(loaded, cls))
    return tuple(found)


def is_expected_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input (one line to the user) rather than a bug (a traceback)."""
    return isinstance(exc, expected_error_types())


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable[[], Any], *, on_interrupt: str) -> int:
    """Run ``main()`` (which parses ``sys.argv``) as a command: its exit code, with expected
    errors and Ctrl-C reported.

    ``on_interrupt`` says how to continue after Ctrl-C (e.g. ``RESUME_JOB``). ``main`` returns
    an int exit code or anything else (a summary: exit code 0).
    """
    try:
        result = main()
    except KeyboardInterrupt:
        if _debug():
            traceback.print_exc()
        print(f"\ninterrupted: {on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_expected_error(e):
            raise
        if _debug():
            traceback.print_exc()
        print(f"error: {str(e) or type(e).__name__}", file=sys.stderr)
        return EXIT_ERROR
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


# ------------------------------------------------------------------------------------ --help
@dataclass(frozen=True)
class FieldHelp:
    """One config field as ``--help`` shows it; ``nested`` marks a dataclass whose fields follow."""

    key: str  # dotted, as an override names it: synth.steps
    type: str
    # YAML text; None when the field is required; "" for a nested config that has a default
    default: str | None
    doc: str
    nested: bool = False


def type_label(tp: Any) -> str:
    """A field's type as a reader writes it: ``int | None``, ``{png, jpg}``, ``list[str]``."""
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " | ".join(type_label(a) for a in get_args(tp))
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in get_args(tp)) + "}"
    if origin in (list, tuple, dict):
        args = ", ".join("..." if a is Ellipsis else type_label(a) for a in get_args(tp))
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def yaml_text(value: Any) -> str:
    """``value`` as it would be written in the YAML config or a ``key=value`` override."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {plain(k): plain(x) for k, x in v.items()}
        return v

    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


# A docstring entry that documents fields: a line starting with the name(s) and a colon, e.g.
# "min_std: pixel ..." or "``address``: ..." or "height / width: ...".
_DOC_ENTRY = re.compile(r"^((?:``)?\w+(?:``)?(?:\s*/\s*(?:``)?\w+(?:``)?)*):\s+(\S.*)$")
_TOOL_COMMENTS = ("fmt:", "type:", "noqa", "pragma")


def _entry_fields(line: str, names: set[str]) -> tuple[list[str], str] | None:
    """The fields a docstring line documents and its text, if it is such an entry."""
    m = _DOC_ENTRY.match(line)
    if not m:
        return None
    keys = [k.strip().strip("`") for k in m.group(1).split("/")]
    return (keys, m.group(2).strip()) if any(k in names for k in keys) else None


def _docstring_docs(cls: type, names: set[str]) -> dict[str, str]:
    """Field docs from the class docstring's entries: a line starting with a field's name and
    a colon, continued by the lines indented under it. An entry whose prose runs on unindented
    is not taken (where it ends cannot be told), so no field gets another field's text."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: dict[str, str] = {}
    for i, line in enumerate(lines):
        entry = _entry_fields(line, names)
        if entry is None:
            continue
        keys, first = entry
        text = [first]
        j = i + 1
        while j < len(lines) and lines[j][:1].isspace() and lines[j].strip():
            text.append(lines[j].strip())
            j += 1
        after = lines[j] if j < len(lines) else ""
        if after.strip() and _entry_fields(after, names) is None:
            continue
        for k in keys:
            if k in names:
                docs[k] = " ".join(text)
    return docs


def _comment_docs(cls: type) -> dict[str, str]:
    """Field docs from the source: the comment lines right above a field and the comment at
    the end of its line (the project's usual way of documenting a field)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class built at runtime): no comments
        return {}
    lines = source.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }

    def is_comment_line(n: int) -> bool:
        return lines[n - 1].lstrip().startswith("#")

    node = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    for stmt in node.body if isinstance(node, ast.ClassDef) else []:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        n = stmt.lineno - 1
        while n >= 1 and is_comment_line(n):
            above.insert(0, comments.get(n, ""))
            n -= 1
        end = stmt.end_lineno or stmt.lineno
        beside = [
            comments[k] for k in range(stmt.lineno, end + 1) if k in comments and not is_comment_line(k)
        ]
        text = [t for t in above + beside if t and not t.startswith(_TOOL_COMMENTS)]
        if text:
            docs[stmt.target.id] = " ".join(text)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Each field's doc: its comment in the source, else its entry in the class docstring."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**_docstring_docs(cls, names), **_comment_docs(cls)}


def _summary(cls: type) -> str:
    """The first line of a class docstring (not the signature dataclass writes when there is none)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) and isinstance(inner[0], type):
            return inner[0]
    return None


def config_fields(cls: type, prefix: str = "") -> Iterator[FieldHelp]:
    """Every field of config dataclass ``cls``, nested dataclasses walked into as dotted keys."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        inner = _dataclass_in(tp)
        doc = docs.get(f.name, "")
        if inner is None:
            shown = None if default is dataclasses.MISSING else yaml_text(default)
            yield FieldHelp(key, type_label(tp), shown, doc)
            continue
        # a nested config: its own fields follow, with their defaults (which hold when it is set)
        shown = None if default is dataclasses.MISSING else "null" if default is None else ""
        summary = _summary(inner)
        yield FieldHelp(key, type_label(tp), shown, " ".join(x for x in (doc, summary) if x), nested=True)
        yield from config_fields(inner, f"{key}.")


def config_help(cls: type, width: int = 100) -> str:
    """The ``--help`` epilog listing ``cls``'s fields (use RawDescriptionHelpFormatter).

    Where the docs come from is said in the text itself, so a reader knows what an empty doc
    means: the field has no comment and no docstring entry.
    """
    lines = [
        f"config fields ({cls.__name__}; YAML keys of --config, each also a key.sub=value override",
        "with a YAML value; docs: the field's comment in the source, else its entry in the class docstring):",
    ]
    optional: list[str] = []  # nested configs that default to null: their fields apply once set
    for f in config_fields(cls):
        parent = next((k for k in optional if f.key.startswith(f"{k}.")), None)
        required = f"(required when {parent} is set)" if parent else "(required)"
        default = required if f.default is None else f"= {f.default}" if f.default else ""
        lines.append(f"  {f.key}: {f.type} {default}".rstrip())
        if f.nested and f.default == "null":
            optional.append(f.key)
        if f.doc:
            lines += textwrap.wrap(f.doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


__all__ = [
    "DEBUG_ENV",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXPECTED_ERRORS",
    "RESUME_JOB",
    "STARTS_OVER",
    "FieldHelp",
    "config_fields",
    "config_help",
    "expected_error_types",
    "field_docs",
    "is_expected_error",
    "run_cli",
    "type_label",
    "yaml_text",
]
