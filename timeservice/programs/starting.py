"""Signals from a command's first moment, under one rule for every command.

Python acts on SIGINT (a KeyboardInterrupt wherever the program is), and the
system on SIGTERM and SIGHUP (the process ends), from long before a
command's main() has said what they should do: a Ctrl-C while the modules
load was a traceback, and a SIGHUP just after a server started (a
``systemctl reload``) killed it. So each face, imported first when it runs
as the program (``python -m``), and each console script hold the three:
one that comes is noted, and delivered once the command can act on it.

The rule: Ctrl-C (SIGINT) ends every command with status 130, quietly.
SIGTERM ends the server with 0 once it has stopped cleanly, as systemd
expects of a stop, and every other command as the system ends it (143 in a
shell). SIGHUP reloads the server, and ends the others as the system does.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Collection

HELD = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP")
    if hasattr(signal, name)
)
PROGRAMS = {
    "timeservice.__main__",
    "timeservice.server",
    "timeservice.client",
    "timeservice.skew",
}
SERVED = tuple(sig for sig in HELD if sig != signal.SIGINT)  # the server's to act on
INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a Ctrl-C

_came: list[int] = []  # signals noted while held, in the order they came


def _note(signum: int, frame: object) -> None:
    _came.append(signum)


def hold() -> None:
    """Note SIGINT, SIGTERM and SIGHUP instead of acting on them, until
    release(): on the main thread, and only where Python's own handling is
    still in place (a program that set its own keeps it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HELD:
        if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(sig, _note)


def deliver(signals: Collection[int] = HELD) -> None:
    """Raise again, to the handlers now in place, those of `signals` that
    came while held, in the order they came."""
    came = [sig for sig in _came if sig in signals]
    _came[:] = [sig for sig in _came if sig not in signals]
    for sig in came:
        signal.raise_signal(sig)


def release(signals: Collection[int] = HELD) -> None:
    """Give those of `signals` still held their usual handling back
    (KeyboardInterrupt for SIGINT, the system's for the others), then
    deliver those that came meanwhile."""
    for sig in signals:
        if signal.getsignal(sig) is _note:
            usual = (
                signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            )
            signal.signal(sig, usual)
    deliver(signals)


def status_after(status: int, stopped_by: int | None) -> int:
    """A command's exit status by the rule: 130 for a stop that Ctrl-C
    asked for, else the status it ended with."""
    if status == 0 and stopped_by == signal.SIGINT:
        return INTERRUPTED
    return status


def running_as_program() -> bool:
    """Whether a face of this package is the program (``python -m``): its
    module, running as ``__main__``, is being imported now."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in PROGRAMS


def console_script(module: str) -> Callable[[], int]:
    """A console script's entry point: holds the signals, then imports and
    runs `module`'s main()."""

    def run() -> int:
        hold()
        from importlib import import_module

        return import_module(module, __package__).main()

    run.__doc__ = f"Run {module}'s main(), the signals held from the start."
    return run


demo = console_script(".demo")
server = console_script(".server")
client = console_script(".client")
skew = console_script(".skew")


if running_as_program():
    hold()
