"""The time client as a library, and ``python -m timeservice.client``.

The public face of the client side: TimeClient speaks the line protocol;
ask_daytime(), ask_time() and ask_ntp() ask the standard protocols once
each, and ask_nts() NTP authenticated with NTS (establish() and
ask_nts_once() for several samples of one Key Establishment; the nts
extra). Each answer is a Sample for the offset arithmetic (estimate(),
verdict()); measure_offset() takes the samples and the best of them in any
protocol, in one call. Durations are seconds, as a float. Importing it loads
no server code.
"""

from __future__ import annotations

import sys

# First: run as the program, it holds the signals while the rest loads.
from .programs import starting  # noqa: F401

# isort: split
from .clients.line import DEFAULT_TIMEOUT, TimeClient
from .clients.measure import measure_offset
from .clients.nts import NtsSession, ask_nts, ask_nts_once, establish
from .clients.offset import Estimate, Sample, estimate, verdict
from .clients.standard import PORTS, UnknownForm, ask_daytime, ask_ntp, ask_time
from .wire.errors import ReplyError
from .wire.ntp import NtpError

__all__ = [
    "DEFAULT_TIMEOUT",
    "PORTS",
    "Estimate",
    "NtsSession",
    "NtpError",
    "ReplyError",
    "Sample",
    "TimeClient",
    "UnknownForm",
    "ask_daytime",
    "ask_ntp",
    "ask_nts",
    "ask_nts_once",
    "establish",
    "ask_time",
    "estimate",
    "measure_offset",
    "verdict",
]

if __name__ == "__main__":  # python -m timeservice.client
    from .programs.client import main

    sys.exit(main())
