"""The line protocol's client: TimeClient, one connection, many questions."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import datetime

from ..wire.errors import ReplyError
from ..wire.line import (
    DEFAULT_PORT,
    MAX_REPLY_BYTES,
    REQUEST,
    parse_reply,
    parse_timestamp,
    timestamp_ns,
)
from .offset import Estimate, Sample, estimate
from .sampling import OFFSET_SAMPLES

DEFAULT_HOST = "127.0.0.1"


DEFAULT_TIMEOUT = 5.0


class TimeClient:
    """One connection to a time server; it can ask for the time many times.

    Use it as a context manager, or ask at once: the first question connects,
    as http.client.HTTPConnection does. `timeout` bounds the connect and each
    reply. After any error (a timeout, a reset, an ERR or invalid reply) the
    connection is closed, since a late answer to the failed request could
    pass for the next one; the next question opens a fresh connection.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> TimeClient:
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self) -> None:
        """Open a fresh connection (closing any open one); OSError if the
        server cannot be reached within the timeout."""
        self.close()
        self._sock = socket.create_connection(self.address, self.timeout)

    def close(self) -> None:
        """Close the connection, if open; the next question opens another."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def get_time(self) -> datetime:
        """Ask once: the server's time (an aware datetime), or ReplyError or
        OSError."""
        with self._closed_on_error():
            return parse_timestamp(parse_reply(self._ask()))

    def measure_offset(self, samples: int = OFFSET_SAMPLES) -> Estimate:
        """Estimate how far the local clock is from the server's (Cristian).

        Asks `samples` times and keeps the answer with the shortest round
        trip; see timeservice.clients.offset.
        """
        taken = []
        with self._closed_on_error():
            for _ in range(samples):
                t1, start = time.time_ns(), time.monotonic_ns()
                line = self._ask()
                end, t4 = time.monotonic_ns(), time.time_ns()
                answer = parse_reply(line)
                ts = timestamp_ns(parse_timestamp(answer))
                taken.append(Sample(t1, ts, t4, end - start, answer))
        return estimate(taken)

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _ask(self) -> bytes:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.sendall(REQUEST)
        return self._read_line(self._sock)

    def _read_line(self, sock: socket.socket) -> bytes:
        """One reply line, within the timeout however the server spreads its bytes."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise ReplyError(f"reply too long: {self._buffer[:40]!r}...")
            sock.settimeout(remaining(deadline))
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                if not self._buffer:
                    raise
                chunk = b""  # it sent, then closed over our unread request
            if not chunk:
                if self._buffer:  # a server of another protocol, as likely as not
                    raise ReplyError(
                        f"server closed the connection after {len(self._buffer)} "
                        f"bytes that are not a reply line: {shown(self._buffer)}"
                    )
                raise ReplyError("server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def remaining(deadline: float) -> float:
    """Seconds left before `deadline`; TimeoutError if none (a 0 timeout
    would make the socket non-blocking instead)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def shown(data: bytes | str, most: int = 64) -> str:
    """What a server sent, for a message: escaped (no byte of it can move the
    terminal's cursor or forge a line) and at most `most` characters of it."""
    text = repr(data[:most])
    return text + "..." if len(data) > most else text
