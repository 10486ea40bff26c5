"""Do these machines' clocks agree, and which one is wrong? The library face
of the skew check, and ``python -m timeservice.skew``.

parse_target() reads ``[PROTOCOL://]HOST[:PORT]``; measure_all() asks many
targets at once; judge() finds the interval most of them share, as NTP's
clock selection does (RFC 5905, section 11.2.1, after Marzullo), and the
status a monitoring system reads.
"""

from __future__ import annotations

import sys

# First: run as the program, it holds the signals while the rest loads.
from .programs import starting  # noqa: F401

# isort: split
from .clients.selection import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Failure,
    GroupVerdict,
    Reading,
    Target,
    intersection,
    judge,
)
from .clients.targets import Asking, measure, measure_all, parse_target

__all__ = [
    "CRITICAL",
    "OK",
    "UNKNOWN",
    "WARNING",
    "Asking",
    "Failure",
    "Reading",
    "Target",
    "GroupVerdict",
    "intersection",
    "judge",
    "measure",
    "measure_all",
    "parse_target",
]

if __name__ == "__main__":  # python -m timeservice.skew
    from .programs.skew import main

    sys.exit(main())
