"""NTP packets, RFC 5905: the server's answer and the client's checks, as pure code.

A packet is 48 bytes. Its timestamps are 64 bits: seconds since 1900 in the
high half (wrapping in 2036, read in the era nearest a reference, as for
RFC 868) and a binary fraction in the low half. The server copies the
client's transmit timestamp into the origin field byte for byte; the client
accepts only a reply whose origin is what it sent, as chrony does.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import ReplyError
from .rfc868 import from_1900, to_1900

DEFAULT_PORT = 123
PACKET = struct.Struct("!BBbbII4sQQQQ")
PACKET_BYTES = PACKET.size  # 48
# A reply up to its transmit timestamp, which is packed last.
_REPLY_HEAD = struct.Struct("!BBcbII4sQ8sQ")
_TIMESTAMP = struct.Struct("!Q")
MODE_CLIENT, MODE_SERVER = 3, 4
LEAP_NONE, LEAP_INSERT, LEAP_DELETE, LEAP_UNSYNCHRONISED = 0, 1, 2, 3
MAX_STRATUM = 15  # 16 is "unsynchronised", sent as 0 on the wire
VERSIONS = range(1, 5)
SYNCHRONISED_STRATUM = 3  # see server_state()
LOCAL_REFERENCE = bytes([127, 127, 1, 1])  # chrony's reference ID for its local clock
NANOSECONDS = 1_000_000_000
FRACTION = 2**32


class NtpError(ReplyError):
    """A reply the client must not use; the message says what the server said."""


def to_timestamp(unix_ns: int) -> int:
    """A time in nanoseconds since 1970 as an NTP timestamp (era folded)."""
    seconds, ns = divmod(unix_ns, NANOSECONDS)
    return to_1900(seconds) << 32 | ns * FRACTION // NANOSECONDS


def from_timestamp(value: int, near_ns: int) -> int:
    """Nanoseconds since 1970 for an NTP timestamp, in the era nearest `near_ns`."""
    seconds = from_1900(value >> 32, near_ns / NANOSECONDS)
    fraction = ((value & 0xFFFF_FFFF) * NANOSECONDS + FRACTION // 2) // FRACTION
    return seconds * NANOSECONDS + fraction


@functools.lru_cache(maxsize=256)  # the server sends the same few values
def to_short(seconds: float) -> int:
    """Seconds in NTP's 16.16 short format, rounded up: a bound never shrinks."""
    return min(0xFFFF_FFFF, max(0, math.ceil(seconds * 65536)))


def from_short(value: int) -> float:
    return value / 65536


@dataclass(frozen=True)
class Packet:
    """The 48 bytes of an NTP packet, field by field (short formats raw)."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int
    root_dispersion: int
    reference_id: bytes
    reference: int
    origin: int
    receive: int
    transmit: int

    def pack(self) -> bytes:
        return PACKET.pack(
            self.leap << 6 | self.version << 3 | self.mode,
            self.stratum,
            self.poll,
            self.precision,
            self.root_delay,
            self.root_dispersion,
            self.reference_id,
            self.reference,
            self.origin,
            self.receive,
            self.transmit,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Packet:
        """The packet in the first 48 bytes; ValueError if there are fewer."""
        if len(data) < PACKET_BYTES:
            raise ValueError(f"{len(data)} bytes, an NTP packet has {PACKET_BYTES}")
        first, *fields = PACKET.unpack_from(data)
        return cls(first >> 6, first >> 3 & 7, first & 7, *fields)

    @property
    def root_distance(self) -> float:
        """How far the server's clock may be from true time, in seconds."""
        return from_short(self.root_delay) / 2 + from_short(self.root_dispersion)


@dataclass(frozen=True)
class KernelState:
    """What the kernel says of its clock (adjtimex): synchronised, leap, error."""

    synchronised: bool
    leap: int  # LEAP_NONE, LEAP_INSERT or LEAP_DELETE
    max_error: float  # seconds


@dataclass(frozen=True)
class ServerState:
    """What the server tells clients about its clock."""

    leap: int
    stratum: int
    reference_id: bytes
    precision: int
    root_dispersion: float


def precision_of(resolution: float) -> int:
    """The clock's precision as NTP encodes it: log2 seconds, rounded up."""
    return max(-32, math.ceil(math.log2(resolution)))


def server_state(
    kernel: KernelState | None, local_stratum: int | None, precision: int
) -> ServerState:
    """Never claim a synchronisation the machine does not have.

    - The kernel says synchronised: its leap flags, stratum `local_stratum`
      or 3 (the kernel does not record the upstream's stratum; 3 is a host
      synchronised from public stratum-2 servers), and a root dispersion
      no smaller than the kernel's maximum error.
    - Otherwise, with `local_stratum` (chrony's ``local stratum``): serve
      this clock as a reference at that stratum, leap indicator 0.
    - Otherwise (unsynchronised, or no kernel state on this platform):
      leap indicator 3 and stratum 16, which is 0 on the wire, so that
      clients ignore the server.

    The reference ID is "LOCL" at stratum 1 (RFC 5905's uncalibrated local
    clock), 127.127.1.1 above it (as chrony's local reference; the server
    never knows its upstream) and "INIT" when unsynchronised.
    """
    floor = 2.0**precision
    if kernel is not None and kernel.synchronised:
        stratum = local_stratum or SYNCHRONISED_STRATUM
        return ServerState(
            kernel.leap,
            stratum,
            b"LOCL" if stratum == 1 else LOCAL_REFERENCE,
            precision,
            max(kernel.max_error, floor),
        )
    if local_stratum is not None:
        reference_id = b"LOCL" if local_stratum == 1 else LOCAL_REFERENCE
        return ServerState(LEAP_NONE, local_stratum, reference_id, precision, floor)
    max_error = kernel.max_error if kernel is not None else 16.0
    return ServerState(LEAP_UNSYNCHRONISED, 0, b"INIT", precision, max_error)


def request_version(packet: bytes) -> int | None:
    """The version of a request a server answers, or None: a 48-byte client
    packet, version 1-4.

    Anything else (short, another mode, extension fields or a MAC, which
    this server does not implement) is dropped.
    """
    if len(packet) != PACKET_BYTES:
        return None
    version = packet[0] >> 3 & 7
    if packet[0] & 7 != MODE_CLIENT or version not in VERSIONS:
        return None
    return version


def client_request(packet: bytes) -> Packet | None:
    """The request a server answers (see request_version()), or None."""
    return None if request_version(packet) is None else Packet.unpack(packet)


def server_reply(
    packet: bytes, state: ServerState, receive_ns: int, now_ns: Callable[[], int]
) -> bytes | None:
    """The 48-byte answer to a client's packet, or None to drop it.

    `receive_ns` is when the packet arrived; `now_ns` is read last, just
    before the reply goes out, for the transmit timestamp. The request's
    poll and transmit fields are copied as bytes: a server answers every
    datagram it is sent, so this is packed at once rather than field by field.
    """
    version = request_version(packet)
    if version is None:
        return None
    receive = to_timestamp(receive_ns)
    head = _REPLY_HEAD.pack(
        state.leap << 6 | version << 3 | MODE_SERVER,
        state.stratum,
        packet[2:3],  # poll
        state.precision,
        0,  # root delay: this clock is its own reference
        to_short(state.root_dispersion),
        state.reference_id,
        receive & ~0xFFFF_FFFF,  # the reference time: this second
        packet[40:],  # origin: the request's transmit timestamp
        receive,
    )
    return head + _TIMESTAMP.pack(to_timestamp(now_ns()))


def kiss_of_death(packet: bytes, code: bytes = b"RATE") -> bytes | None:
    """A Kiss-o'-Death answer (stratum 0, the code as reference ID), or None.

    It carries no time: receive and transmit repeat the client's own
    timestamp, as ntpd does.
    """
    request = client_request(packet)
    if request is None:
        return None
    return Packet(
        LEAP_UNSYNCHRONISED,
        request.version,
        MODE_SERVER,
        0,
        request.poll,
        0,
        0,
        0,
        code,
        0,
        request.transmit,
        request.transmit,
        request.transmit,
    ).pack()


def request_packet(transmit_ns: int) -> bytes:
    """A version 4 client request whose transmit timestamp is `transmit_ns`."""
    return Packet(
        LEAP_NONE, 4, MODE_CLIENT, 0, 0, 0, 0, 0, bytes(4), 0, 0, 0,
        to_timestamp(transmit_ns),
    ).pack()  # fmt: skip


def check_reply(data: bytes, request: bytes) -> Packet:
    """The server's reply to `request` if a client may use it; else NtpError.

    The checks chrony makes: the origin is the request's transmit timestamp,
    it is a server packet, not a Kiss-o'-Death, not unsynchronised, stratum
    1 to 15, and a transmit timestamp is set.
    """
    try:
        reply = Packet.unpack(data)
    except ValueError as exc:
        raise NtpError(f"short reply: {exc}") from None
    if reply.origin != Packet.unpack(request).transmit:
        raise NtpError("reply does not answer our request (origin timestamp differs)")
    if reply.mode != MODE_SERVER:
        raise NtpError(f"not a server reply (mode {reply.mode})")
    code = reply.reference_id.decode("ascii", "replace").rstrip("\0")
    if reply.stratum == 0 and code != "INIT":
        raise NtpError(f"server sent a Kiss-o'-Death, code {code!r}")
    if reply.leap == LEAP_UNSYNCHRONISED or reply.stratum == 0:
        raise NtpError(
            f"server says its clock is unsynchronised (leap indicator "
            f"{reply.leap}, stratum {reply.stratum})"
        )
    if reply.stratum > MAX_STRATUM:
        raise NtpError(f"server stratum {reply.stratum} is not 1 to {MAX_STRATUM}")
    if reply.transmit == 0:
        raise NtpError("server sent no transmit timestamp")
    return reply
