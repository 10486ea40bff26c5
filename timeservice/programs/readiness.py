"""The ready file: what a started server serves, for programs rather than
people. Once every socket is bound and the signals are handled, the server
writes one JSON object: its pid, and for each socket the protocol, the
transport, the address and the port really bound (port 0 resolved). It is
written whole or not at all (a temporary file renamed over it), so a
program that waits for the file never reads half of it; the start-up lines
on stdout say the same for people."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import tempfile
from collections.abc import Iterable
from typing import Any

TRANSPORTS = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def served(servers: Iterable[socketserver.BaseServer]) -> list[dict[str, Any]]:
    """One entry for each server's socket: protocol, transport, address, port."""
    entries = []
    for server in servers:
        sock: socket.socket = server.socket  # type: ignore[attr-defined]
        address = sock.getsockname()
        entries.append(
            {
                "protocol": getattr(server.RequestHandlerClass, "protocol", "unknown"),
                "transport": TRANSPORTS.get(sock.type, str(sock.type)),
                "address": address[0],
                "port": address[1],
            }
        )
    return entries


def write_ready_file(path: str, servers: Iterable[socketserver.BaseServer]) -> None:
    """Write the ready file at `path`, whole: OSError if it cannot be."""
    folder = os.path.dirname(os.path.abspath(path))
    content = json.dumps({"pid": os.getpid(), "serving": served(servers)}, indent=2)
    handle, temporary = tempfile.mkstemp(prefix=".ready-", dir=folder)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(content + "\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def check_writable(path: str) -> None:
    """OSError now, before any socket is bound, if the ready file's folder
    cannot take it."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(prefix=".ready-", dir=folder):
        pass
