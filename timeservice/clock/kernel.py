"""The kernel's clock state, read-only: synchronised or not, leap second, error.

Linux has adjtimex(2), macOS and the BSDs ntp_adjtime(3); called with no
mode bits they only read. Where neither exists, read() returns None and the
NTP server treats the clock as unsynchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..host import capabilities
from ..wire.ntp import LEAP_DELETE, LEAP_INSERT, LEAP_NONE, precision_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelState:
    """What the kernel says of its clock (adjtimex): synchronised, leap, error."""

    synchronised: bool
    leap: int  # LEAP_NONE, LEAP_INSERT or LEAP_DELETE
    max_error: float  # seconds


STA_INS, STA_DEL, STA_UNSYNC = 0x0010, 0x0020, 0x0040
TIME_ERROR = 5  # what the call returns while the clock is unsynchronised


class Timex(ctypes.Structure):
    """The start of struct timex, the same on Linux, macOS and the BSDs."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),  # microseconds
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_char * 256),  # more than any platform's remainder
    ]


def find_call() -> Callable[[Any], int] | None:
    """The C library's adjtimex() or ntp_adjtime(), ready to be called with
    a timex structure; None where there is neither (or on the portable paths)."""
    if capabilities.PORTABLE:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except (OSError, TypeError):  # no C library to load, as on Windows
        return None
    for name in ("adjtimex", "ntp_adjtime"):
        call = getattr(libc, name, None)
        if call is not None:
            call.argtypes = [ctypes.POINTER(Timex)]
            call.restype = ctypes.c_int
            return call
    return None


CALL = find_call()
AVAILABLE = CALL is not None


def state_of(result: int, status: int, max_error_us: int) -> KernelState:
    """What the call's result and the structure's status and maxerror say."""
    leap = (
        LEAP_INSERT
        if status & STA_INS
        else LEAP_DELETE
        if status & STA_DEL
        else LEAP_NONE
    )
    synchronised = not status & STA_UNSYNC and result != TIME_ERROR
    return KernelState(synchronised, leap, max_error_us / 1e6)


def read(call: Callable[[Any], int] | None = CALL) -> KernelState | None:
    """The kernel's clock state now, or None where it cannot be read. `call`
    is adjtimex() (see find_call()); it is given a Timex to fill in."""
    if call is None:
        return None
    timex = Timex()
    result = call(timex)  # ctypes passes it by reference (argtypes)
    if result < 0:
        logger.debug("cannot read the kernel clock: errno %d", ctypes.get_errno())
        return None
    return state_of(result, timex.status, timex.maxerror)


def precision(reads: int = 100) -> int:
    """The system clock's precision as NTP encodes it: its resolution, or the
    smallest step seen between reads if reading takes longer."""
    smallest = 1.0
    before = time.time_ns()
    for _ in range(reads):
        now = time.time_ns()
        if now > before:
            smallest = min(smallest, (now - before) / 1e9)
        before = now
    return precision_of(max(time.get_clock_info("time").resolution, smallest))
