"""The time server as a library, and ``python -m timeservice.server``.

This file only gathers the names a program imports. The line protocol's
server, the one the exercise asks for, is timeservice/servers/line.py; its
text is timeservice/wire/line.py (docs/kurs.md maps the exercise to them).
The public face of the server side: the servers and their handlers, each
composed from the transports' parts (timeservice.transport) as socketserver
composes ThreadingTCPServer, and the service that runs several of them.
Every part's docstring lists the methods and class variables that may be
overridden; every class variable named in a part's ``settings`` can also be
given to the constructor as a keyword, for one server only.
"""

from __future__ import annotations

import sys

# First: run as the program, it holds the signals while the rest loads.
from .programs import starting  # noqa: F401

# isort: split
from .operations.service import ServerStopped, Service
from .policy.access import AccessList
from .servers.line import TimeRequestHandler, TimeServer
from .servers.ntp import NtpHandler, NtpServer
from .servers.oneshot import AnswerHandler, DaytimeHandler, OneShotServer, TimeHandler
from .transport.datagram import DatagramServer

__all__ = [
    "AccessList",
    "AnswerHandler",
    "DatagramServer",
    "DaytimeHandler",
    "NtpHandler",
    "NtpServer",
    "OneShotServer",
    "ServerStopped",
    "Service",
    "TimeHandler",
    "TimeRequestHandler",
    "TimeServer",
]

if __name__ == "__main__":  # python -m timeservice.server
    from .programs.server import main

    sys.exit(main())
