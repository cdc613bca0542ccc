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
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

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
    "factory.train.recipe.RecipeError",
    "factory.train.controlnet.TrainError",
    "factory.train.ship.ShipError",
    "factory.layout.backbones.LayoutError",
    "factory.layout.store.LayoutStoreError",
    "factory.conditions.base.ConditionError",
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


__all__ = [
    "DEBUG_ENV",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXPECTED_ERRORS",
    "RESUME_JOB",
    "STARTS_OVER",
    "expected_error_types",
    "is_expected_error",
    "run_cli",
]
