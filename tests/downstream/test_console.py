"""The console held while mmengine's Runner starts (downstream.segformer.console): written out
unchanged when the start succeeds or a bug stops it, dropped when bad input stops it."""

from __future__ import annotations

import os
import sys

import pytest

from factory.data.sample import DataError


def test_held_output_is_written_on_release_and_passes_through_after(capsys):
    from downstream.segformer.console import HeldConsole

    with HeldConsole() as console:
        stream = sys.stdout  # what mmengine's logger takes when the Runner creates it
        print("start-up report")
        print("a warning", file=sys.stderr)
        assert capsys.readouterr().out == ""  # held
        console.release()
        print("iteration 1", file=stream)  # the logger keeps writing to the stream it took
    got = capsys.readouterr()
    assert got.out == "start-up report\niteration 1\n" and got.err == "a warning\n"


def test_held_output_is_dropped_on_bad_input_and_kept_for_a_bug(capsys):
    from downstream.segformer.console import HeldConsole

    with pytest.raises(DataError), HeldConsole():
        print("start-up report")
        raise DataError("data/x", "does not exist", "run `make city`")
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError), HeldConsole():
        print("start-up report")
        raise RuntimeError("a bug")
    assert capsys.readouterr().out == "start-up report\n"


def test_a_forked_loader_worker_writes_through_while_the_console_is_held(capfd):
    """mmengine forks the data loader's workers while the train loop is built, during the hold:
    what a worker prints (a skipped bad sample) must not wait for a release it never gets."""
    from downstream.segformer.console import HeldConsole

    with HeldConsole():
        pid = os.fork()
        if pid == 0:  # the worker
            print("skipped bad training sample", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        assert capfd.readouterr().out == "skipped bad training sample\n"
