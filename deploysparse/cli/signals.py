"""SIGTERM as an exception, for the commands that must clean up when they are stopped.

Python turns SIGINT (Ctrl-C) into KeyboardInterrupt, which unwinds through every `finally`; SIGTERM
(what `kill`, `timeout`, systemd and CI runners send) ends the process at once by default, leaving
what a `finally` would have removed: `run`'s staging folder beside OUTDIR. While `sigterm_raises()`
is active, SIGTERM raises `Terminated` instead, and `deploysparse.cli.main` exits with
`TERMINATED_EXIT_CODE` (128 + 15, what a shell reports for a process SIGTERM ended).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so `except Exception` (a sweep
    recording a failed point, a step wrapping errors) lets it through to the cleanup and the exit."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` in the main thread; the previous handler is restored
    on exit. A second SIGTERM during the cleanup the first one started is ignored, so the cleanup
    finishes (SIGKILL still ends the process). Outside the main thread (where Python cannot install
    a handler) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        # None: a handler installed outside Python; the default is the best that can be restored.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
