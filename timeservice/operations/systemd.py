"""systemd's socket activation and readiness protocols, without libsystemd.

Both are plain environment variables, as sd_listen_fds(3) and sd_notify(3)
describe them: the sockets a unit passes are descriptors 3 and up,
LISTEN_FDS of them, meant for the process LISTEN_PID and named in
LISTEN_FDNAMES; the service manager reads state lines such as ``READY=1``
from datagrams sent to the Unix socket NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

FIRST_DESCRIPTOR = 3  # SD_LISTEN_FDS_START
ACTIVATION = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The passed sockets cannot be used; the message says why in one line."""


def inherited_sockets(
    environ: MutableMapping[str, str] = os.environ,
) -> list[tuple[str, socket.socket]] | None:
    """The sockets systemd passed, each with its name; None if it passed none.

    The variables are taken out of `environ`, as sd_listen_fds(1) does, so
    that no child process takes the sockets for its own.
    """
    if "LISTEN_FDS" not in environ:
        return None
    count, pid, names = (environ.pop(name, "") for name in ACTIVATION)
    if not (count.isascii() and count.isdigit() and pid.isascii() and pid.isdigit()):
        raise ActivationError(
            f"LISTEN_FDS={count!r} and LISTEN_PID={pid!r} must be numbers"
        )
    if int(pid) != os.getpid():
        raise ActivationError(
            f"LISTEN_PID={pid} is another process (this one is {os.getpid()})"
        )
    if int(count) == 0:
        raise ActivationError(
            "LISTEN_FDS=0: systemd passed no socket; name them in the .socket unit"
        )
    labels = names.split(":") if names else []
    if len(labels) != int(count):
        raise ActivationError(
            f"LISTEN_FDNAMES={names!r} names {len(labels)} socket(s), "
            f"LISTEN_FDS={count}: name each with FileDescriptorName="
        )
    sockets = []
    for descriptor, name in enumerate(labels, FIRST_DESCRIPTOR):
        try:
            sock = socket.socket(fileno=descriptor)
        except OSError as exc:
            raise ActivationError(
                f"descriptor {descriptor} ({name}) is not a socket: {exc.strerror}"
            ) from None
        sock.set_inheritable(False)
        sockets.append((name, sock))
    return sockets


def is_listening(sock: socket.socket) -> bool:
    """Whether a stream socket listens (one systemd passes with Accept=no does)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except (OSError, AttributeError):  # no SO_ACCEPTCONN: assume it does
        return True


def watchdog_seconds(environ: MutableMapping[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process (WatchdogSec=), taken
    out of `environ` as sd_watchdog_enabled(3) does; None if there is none."""
    usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process
    return int(usec) / 1e6


class Notifier:
    """Tells the service manager the service's state; does nothing without it.

    The socket is connected at once, so that the notices still reach the
    manager after the process has dropped its privileges. `watchdog` is the
    timeout of systemd's watchdog, within which WATCHDOG=1 must come, or
    None.
    """

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        self.sock: socket.socket | None = None
        self.watchdog = watchdog_seconds(environ)
        path = environ.pop("NOTIFY_SOCKET", "")
        if not path:
            return
        address = "\0" + path[1:] if path.startswith("@") else path  # abstract
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except (OSError, AttributeError) as exc:  # no Unix sockets here
            logger.warning("cannot notify the service manager: %s", exc)
            return
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            logger.warning("cannot reach NOTIFY_SOCKET %s: %s", path, exc.strerror)
            return
        self.sock = sock

    def notify(self, *assignments: str) -> None:
        """Send state lines such as ``READY=1`` and ``STATUS=...`` in one datagram."""
        if self.sock is None:
            return
        try:
            self.sock.send("\n".join(assignments).encode())
        except OSError as exc:
            logger.warning("cannot notify the service manager: %s", exc.strerror)

    def watched(self) -> None:
        """Tell the watchdog that all is well (WATCHDOG=1)."""
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket to systemd, if open."""
        if self.sock is not None:
            self.sock.close()
