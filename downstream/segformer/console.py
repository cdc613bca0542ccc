"""Hold the console from the Runner's construction until training starts (``HeldConsole``).

Why: mmengine's Runner prints its start-up report - the environment, the whole config (~500
lines), the hook table - and the model build's warnings before it builds the data loaders or
loads a checkpoint, which is where a first run fails on bad input (no dataset written yet, a
checkpoint the safe loader refuses). The one line saying what is wrong would come after all of
it. So both streams are held until training begins: then what was held is written out,
unchanged; on an expected error (``factory.cli.is_expected_error``) or Ctrl-C it is dropped
(mmengine's log file in the work dir keeps the report); on a bug it is written out before the
traceback, which may need it.

Streams, not logger levels: mmengine's logger takes ``sys.stdout`` when the Runner creates it,
so the stream it takes is a ``_Gate`` that holds while the console is held and writes through
afterwards. The data loader's workers are forked during the hold (when the train loop is built)
and inherit the gate: in any process but the one that made it, the gate writes through, since
only that process ever releases it.
"""

from __future__ import annotations

import io
import os
import sys
from types import TracebackType
from typing import Any, TextIO

from mmengine.hooks import Hook

from factory.cli import is_expected_error


class _Gate(io.TextIOBase):
    """A text stream that buffers while held and writes through to ``target`` once released."""

    def __init__(self, target: TextIO):
        self.target = target
        self._held: io.StringIO | None = io.StringIO()
        self._pid = os.getpid()  # a forked loader worker is another process: it writes through

    def _holding(self) -> bool:
        return self._held is not None and os.getpid() == self._pid

    def write(self, s: str) -> int:
        if self._holding():
            assert self._held is not None
            return self._held.write(s)
        return self.target.write(s)

    def flush(self) -> None:
        if not self._holding():
            self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase's is None; the target's is real
        return getattr(self.target, "encoding", "utf-8")

    def release(self, keep: bool) -> None:
        """Write what was held to the target (``keep``) or drop it; pass everything on from now."""
        if self._held is None:
            return
        held, self._held = self._held.getvalue(), None
        if keep and held:
            self.target.write(held)
            self.target.flush()


class HeldConsole:
    """``with HeldConsole() as console:`` - stdout and stderr held until ``console.release()``
    or the end of the block (see the module docstring for what happens to what was held)."""

    def __init__(self) -> None:
        self._saved: tuple[TextIO, TextIO] | None = None
        self._out: _Gate | None = None
        self._err: _Gate | None = None

    def __enter__(self) -> HeldConsole:
        self._saved = (sys.stdout, sys.stderr)
        self._out, self._err = _Gate(sys.stdout), _Gate(sys.stderr)
        sys.stdout, sys.stderr = self._out, self._err  # type: ignore[assignment]
        return self

    def release(self, keep: bool = True) -> None:
        """End the hold: the real streams back in ``sys``, what was held written out (``keep``)
        or dropped; the gates pass on whatever is written to them later (mmengine's logger)."""
        if self._saved is None or self._out is None or self._err is None:
            return
        if sys.stdout is self._out:
            sys.stdout = self._saved[0]
        if sys.stderr is self._err:
            sys.stderr = self._saved[1]
        self._out.release(keep)
        self._err.release(keep)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        bad_input = exc is not None and (isinstance(exc, KeyboardInterrupt) or is_expected_error(exc))
        self.release(keep=not bad_input)


class ReleaseConsoleHook(Hook):
    """Ends the hold when training begins: after the data loaders are built and a checkpoint
    is loaded, before the first iteration (``before_train``)."""

    def __init__(self, console: HeldConsole):
        self.console = console

    def before_train(self, runner: Any) -> None:
        self.console.release(keep=True)


__all__ = ["HeldConsole", "ReleaseConsoleHook"]
