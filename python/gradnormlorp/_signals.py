"""Deferring Python-level signal handlers across a block that must not be
cut in half (a library call and the bookkeeping that records it)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

# Signals a Python program may handle (SIGINT's default handler raises
# KeyboardInterrupt); SIGKILL and SIGSTOP cannot be caught.
_CATCHABLE = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block, signals that have a Python handler are recorded, not
    handled; on exit the handlers are put back and run, in arrival order, for
    the signals that came. So a Ctrl-C during the block raises
    KeyboardInterrupt after it, never inside it.

    Python runs signal handlers on the main thread only, so on any other
    thread nothing can interrupt the block and this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, object]] = []

    def record(signum, frame):
        pending.append((signum, frame))

    saved = {}
    try:
        for sig in _CATCHABLE:
            handler = signal.getsignal(sig)
            if callable(handler):
                saved[sig] = handler
                signal.signal(sig, record)
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for signum, frame in pending:
            saved[signum](signum, frame)
