"""Asking the standard protocols once each: Daytime (RFC 867), Time
(RFC 868) and NTP (RFC 5905), every address of a name in turn, each answer
a Sample for the offset arithmetic."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..wire import daytime, ntp, ntp_checks, nts, rfc868
from ..wire.errors import ReplyError
from ..wire.line import DEFAULT_PORT, format_timestamp, timestamp_ns
from .line import DEFAULT_TIMEOUT, remaining, shown
from .offset import NANOSECONDS, Sample

# A server that names whole seconds may read them from a clock that moves
# once a tick, as glibc's time() on Linux does (xinetd's Daytime and Time):
# it can name the second that ended up to a tick ago. 10 ms is the longest
# Linux tick (HZ=100).
COARSE_CLOCK = 10_000_000  # ns


PORTS = {
    "line": DEFAULT_PORT,
    "daytime": daytime.DEFAULT_PORT,
    "time": rfc868.DEFAULT_PORT,
    "ntp": ntp.DEFAULT_PORT,
    "nts": nts.KE_PORT,  # NTS Key Establishment's, which names the NTP port
}


MAX_DATAGRAM = 2048  # an NTS reply with its cookies: a kilobyte or more


def addresses(host: str, port: int, kind: socket.SocketKind) -> list[tuple]:
    """Each family and address a name resolves to, in the order to try them,
    looked up before any clock is read."""
    return [
        (family, address)
        for family, _, _, _, address in socket.getaddrinfo(host, port, type=kind)
    ]


def each_address(host: str, port: int, kind: socket.SocketKind, ask: Callable) -> Any:
    """`ask(family, address)` for each address of the name until one answers,
    as socket.create_connection() tries them: a refusal or an unreachable
    network moves on to the next; a timeout, or a reply, is final."""
    failure: OSError | None = None
    for family, address in addresses(host, port, kind):
        try:
            return ask(family, address)
        except TimeoutError:
            raise
        except OSError as exc:
            failure = exc
    assert failure is not None  # getaddrinfo() gives one address at least
    raise failure


def exchange(
    host: str, port: int, *, udp: bool, timeout: float, request: bytes = b""
) -> tuple[bytes, int, int, int]:
    """One answer to one datagram, or all a TCP server sends before it closes.

    Returns the bytes, the local clock before asking (t1) and after the
    answer (t4), and the monotonic time between, in nanoseconds. `timeout`
    bounds the whole exchange; each address of the name is tried.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM

    def ask(family: int, address: tuple) -> tuple[bytes, int, int, int]:
        with socket.socket(family, kind) as sock:
            deadline = time.monotonic() + timeout
            sock.settimeout(timeout)
            t1, start = time.time_ns(), time.monotonic_ns()
            sock.connect(address)
            if udp:
                sock.send(request)
                data = sock.recv(MAX_DATAGRAM)
            else:
                data = b""
                while len(data) <= daytime.MAX_REPLY_BYTES:
                    sock.settimeout(remaining(deadline))
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            end, t4 = time.monotonic_ns(), time.time_ns()
        return data, t1, t4, end - start

    return each_address(host, port, kind, ask)


class UnknownForm(ReplyError):
    """A Daytime answer in a form this client does not read (RFC 867 fixes
    none); `text` is the answer as it came."""

    def __init__(self, text: str) -> None:
        super().__init__(f"cannot read the daytime form {shown(text)}")
        self.text = text


def ask_daytime(
    host: str,
    port: int = daytime.DEFAULT_PORT,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Sample:
    """Ask a Daytime server (RFC 867) once: a Sample, whose `answer` is the
    time as RFC 3339; UnknownForm for a form this client does not read."""
    data, t1, t4, delay = exchange(host, port, udp=udp, timeout=timeout)
    text = data[: daytime.MAX_REPLY_BYTES].decode("utf-8", "replace").strip()
    if not text:
        raise ReplyError("server sent no time")
    try:
        reading = daytime.parse_daytime(text)
    except ValueError:
        raise UnknownForm(text) from None
    ts = timestamp_ns(reading.moment)
    resolution = round(reading.resolution * NANOSECONDS)
    if resolution >= NANOSECONDS:
        resolution += COARSE_CLOCK
    answer = format_timestamp(reading.moment)
    return Sample(t1, ts, t4, delay, answer, resolution)


def ask_time(
    host: str,
    port: int = rfc868.DEFAULT_PORT,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Sample:
    """Ask a Time server (RFC 868): whole seconds, in the era nearest this clock."""
    data, t1, t4, delay = exchange(host, port, udp=udp, timeout=timeout)
    if not data:
        raise ReplyError("server sent no time")
    try:
        seconds = rfc868.decode(data, near=t4 / NANOSECONDS)
    except ValueError as exc:
        raise ReplyError(str(exc)) from None
    ts = seconds * NANOSECONDS
    return Sample(t1, ts, t4, delay, local_timestamp(ts), NANOSECONDS + COARSE_CLOCK)


def ask_ntp(
    host: str,
    port: int = ntp.DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_distance: float = ntp.MAX_DISTANCE,
) -> Sample:
    """Ask an NTP server once, and check its reply as chrony does.

    Datagrams that do not answer this request (another origin) are passed
    over until `timeout`; a reply that fails RFC 5905's tests (a
    Kiss-o'-Death, an unsynchronised server, a root distance over
    `max_distance`...) raises ntp.NtpError.
    """
    return ntp_exchange(
        host,
        port,
        ntp.request_packet,
        lambda data, request: ntp_checks.check_reply(data, request, max_distance),
        timeout,
    )


def ntp_exchange(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    check: Callable[[bytes, bytes], ntp.Packet],
    timeout: float,
) -> Sample:
    """One NTP exchange, to each address of the name until one answers: the
    request `make_request(t1)` makes (t1 its transmit time), the first
    datagram that answers it (its origin), `check(reply, request)` passed
    (ntp.NtpError, or another ReplyError, if not), as a Sample."""

    def ask(family: int, address: tuple) -> tuple[bytes, bytes, int, int, int, int]:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            deadline = time.monotonic() + timeout
            t1, start = time.time_ns(), time.monotonic_ns()
            request = make_request(t1)
            sent = request[40:48]
            sock.send(request)
            other = b""  # the first datagram that is no answer to it
            for _ in range(64):  # strays are few; the deadline ends it anyway
                try:
                    sock.settimeout(remaining(deadline))
                    data = sock.recv(MAX_DATAGRAM)
                except TimeoutError:
                    if other:  # a server did answer, in another protocol
                        raise ReplyError(
                            f"server sent {len(other)} bytes that are not an NTP "
                            f"reply: {shown(other)}"
                        ) from None
                    raise
                end, t4 = time.monotonic_ns(), time.time_ns()
                if len(data) >= ntp.PACKET_BYTES and data[24:32] == sent:
                    return data, request, t1, t4, start, end
                other = other or data
            raise ReplyError("no reply to this request among 64 datagrams")

    data, request, t1, t4, start, end = each_address(host, port, socket.SOCK_DGRAM, ask)
    reply = check(data, request)
    t2 = ntp.from_timestamp(reply.receive, near_ns=t1)
    t3 = ntp.from_timestamp(reply.transmit, near_ns=t1)
    precision = 2.0**reply.precision
    if t3 - t2 > end - start:
        # Held longer than the whole round trip: its receive time is on
        # another clock (a kernel's, under a tool like faketime). Its
        # transmit time alone is read as any server's answer is.
        return Sample(
            t1,
            t3,
            t4,
            end - start,
            local_timestamp(t3),
            root_distance=reply.root_distance,
            precision=precision,
            stratum=reply.stratum,
        )
    return Sample(
        t1,
        t2,
        t4,
        end - start,
        local_timestamp(t3),
        t3_ns=t3,
        root_distance=reply.root_distance,
        precision=precision,
        stratum=reply.stratum,
    )


def local_timestamp(nanoseconds: int) -> str:
    """A time on the local clock, in the form the server answers in."""
    seconds, rest = divmod(nanoseconds, NANOSECONDS)
    moment = datetime.fromtimestamp(seconds, UTC).astimezone()
    return format_timestamp(moment.replace(microsecond=rest // 1000))
