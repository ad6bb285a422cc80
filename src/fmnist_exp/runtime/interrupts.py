"""SIGTERM and SIGHUP as Ctrl-C: a KeyboardInterrupt in the main thread, so that a run ends KILLED.

Python runs a signal handler between two bytecodes of the main thread, wherever it is. When that is
inside a finalizer (a weakref callback or `__del__` run by the garbage collector, as SQLAlchemy's are),
Python prints "Exception ignored in ..." and drops the KeyboardInterrupt: the signal would be lost and
the run would go on. So the handler also records the signal, and `check()`, called where a run writes
to its store (every epoch at least), raises it again if it was dropped. The record is cleared when
the interrupt reaches the code that ends the run (`delivered()`), and when the signals are released.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_pending: str | None = None  # the name of a signal raised but not yet delivered to the run's handler


def _interrupt(signum, frame):
    global _pending
    _pending = signal.Signals(signum).name
    raise KeyboardInterrupt(_pending)


def check() -> None:
    """Raise the KeyboardInterrupt of a signal whose first one was swallowed by a finalizer."""
    if _pending:
        raise KeyboardInterrupt(_pending)


def as_interrupt(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt behind `error`: itself, or, while a signal is pending, the KeyboardInterrupt the
    signal raised before something turned it into another exception on its way up (a C extension
    whose import it cut short raises ImportError "initialization failed"). None for a plain error."""
    if isinstance(error, KeyboardInterrupt):
        return error
    return KeyboardInterrupt(_pending) if _pending else None


def delivered() -> None:
    """The interrupt reached the code that ends the run: nothing is pending any more."""
    global _pending
    _pending = None


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, like Ctrl-C, for the whole run
    (training, test pass, model logging), so the run ends KILLED and can be resumed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        delivered()
