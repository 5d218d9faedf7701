"""SIGTERM and SIGHUP unwind like Ctrl-C while long work runs (Triton staging and serving, profile's
temporary export, ...).

Python's default for SIGTERM (kill, systemd, `docker stop`) and SIGHUP (a closed terminal) ends
the process on the spot: no `finally` runs, so a half-staged model folder, a started
tritonserver (its own session: it would outlive us) or its runtime folder stay behind. SIGINT
instead raises KeyboardInterrupt and everything on the stack cleans up. `unwind_on_termination`
makes the other two behave the same way, then - if nothing caught it - ends the process by the
signal as it would have without us (exit status 128 + signal for the shell).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP")) if s)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived. A KeyboardInterrupt (a BaseException): `except Exception` in the
    work does not swallow it, and code that stops on Ctrl-C stops on it too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def unwind_on_termination() -> Iterator[None]:
    """While inside: SIGTERM/SIGHUP raise Terminated in the main thread (once: a second signal
    during the clean-up is ignored rather than cutting it short). A Terminated that leaves the
    block re-delivers its signal with the previous disposition. Signals already ignored
    (nohup) stay ignored; outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    previous = {}
    for sig in _SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    except Terminated as exc:
        _restore(previous)
        before = previous.get(exc.signum, signal.SIG_DFL)
        if callable(before):
            before(exc.signum, None)
        elif before in (signal.SIG_DFL, None):
            os.kill(os.getpid(), exc.signum)   # handler restored: the process ends by the signal
        raise
    finally:
        _restore(previous)


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
