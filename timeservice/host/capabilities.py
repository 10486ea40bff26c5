"""What this platform offers beyond portable Python, tested once at import.

Each speed-up that needs a platform feature asks here, and uses its portable
fallback when the answer is no. Set ``TIMESERVICE_PORTABLE=1`` to make every
answer no, so that the fallbacks run (and are tested) on Linux too.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys

logger = logging.getLogger(__name__)

PORTABLE = os.environ.get("TIMESERVICE_PORTABLE", "") not in ("", "0")

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


def sockets_are_files() -> bool:
    """Whether a socket's fileno() is a file descriptor that open() can read.

    True on POSIX; on Windows it is a socket handle that the C runtime
    does not know, and socket.makefile() is the only reader.
    """
    left, right = socket.socketpair()
    with left, right:
        try:
            return stat.S_ISSOCK(os.fstat(left.fileno()).st_mode)
        except (OSError, ValueError):
            return False


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


SOCKETS_ARE_FILES = not PORTABLE and sockets_are_files()
CPU_AFFINITY = not PORTABLE and hasattr(os, "sched_setaffinity")
OPEN_FILE_LIMIT = not PORTABLE and resource is not None
# The kernel's receive time of a datagram: Linux's SO_TIMESTAMPNS, by recvmsg().
RECEIVE_TIMESTAMPS = (
    not PORTABLE
    and hasattr(socket.socket, "recvmsg")
    and (hasattr(socket, "SO_TIMESTAMPNS") or sys.platform.startswith("linux"))
)

# The kernel's transmit time of a datagram, read back from the socket's error
# queue: Linux's SO_TIMESTAMPING and MSG_ERRQUEUE, beside its receive times.
TRANSMIT_TIMESTAMPS = (
    RECEIVE_TIMESTAMPS
    and sys.platform.startswith("linux")
    and hasattr(socket, "MSG_ERRQUEUE")
    and hasattr(socket.socket, "sendmsg")
)

# A send that stops before anything leaves (Linux's MSG_PROBE: the kernel
# looks up the route, builds nothing and sends nothing). Where there is one,
# a send from idle is readied with it, after a send to a socket of its own.
PROBE_SEND = not PORTABLE and sys.platform.startswith("linux")

# Reads that return at once when nothing is waiting, asked per call.
DONT_WAIT = not PORTABLE and hasattr(socket, "MSG_DONTWAIT")

# Which address a datagram was sent to, and a reply sent from it: IP_PKTINFO
# and IPV6_PKTINFO with recvmsg() and sendmsg(); Linux names IP_PKTINFO 8.
DESTINATION_ADDRESS = (
    not PORTABLE
    and hasattr(socket.socket, "sendmsg")
    and hasattr(socket, "IPV6_RECVPKTINFO")
    and (hasattr(socket, "IP_PKTINFO") or sys.platform.startswith("linux"))
)


def open_file_limit() -> int | None:
    """The soft limit on open files, or None if there is none or it is unknown."""
    if not OPEN_FILE_LIMIT:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def allowed_cpus() -> set[int]:
    """The CPUs this thread may run on; empty where affinity is not available."""
    return set(os.sched_getaffinity(0)) if CPU_AFFINITY else set()


def current_cpu() -> int | None:
    """The CPU the kernel last ran this process on, where /proc tells it."""
    try:
        with open("/proc/self/stat") as stat_file:
            return int(stat_file.read().rsplit(")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def describe() -> str:
    """The choices made, in one line for the -v log."""
    return (
        f"reader: {'C over the descriptor' if SOCKETS_ARE_FILES else 'makefile()'}; "
        f"CPU affinity: {'yes' if CPU_AFFINITY else 'no'}; "
        f"open-file limit: {'checked' if OPEN_FILE_LIMIT else 'not checked'}; "
        f"datagram receive times: {'kernel' if RECEIVE_TIMESTAMPS else 'read'}; "
        f"transmit times: {'kernel' if TRANSMIT_TIMESTAMPS else 'read'}; "
        f"send path warmed: {'a send to itself, MSG_PROBE' if PROBE_SEND else 'no'}; "
        f"datagram reads: {'MSG_DONTWAIT' if DONT_WAIT else 'a non-blocking socket'}; "
        f"datagram replies from: "
        f"{'the address asked' if DESTINATION_ADDRESS else 'the kernel'}; "
        f"GIL: {'on' if gil_enabled() else 'off'}"
    )
