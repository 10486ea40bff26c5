"""NTP packets, RFC 5905: the server's answer and the client's checks, as pure code.

A packet is 48 bytes. Its timestamps are 64 bits: seconds since 1900 in the
high half (wrapping in 2036, read in the era nearest a reference, as for
RFC 868) and a binary fraction in the low half. The server copies the
client's transmit timestamp into the origin field byte for byte; the client
accepts only a reply whose origin is what it sent, as chrony does.
ServerState and Upstream are what a packet says of a server's clock; what
to claim is decided in timeservice.clock.claims.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ReplyError
from .nts import read_fields
from .rfc868 import EPOCH_1900, ERA, from_1900

DEFAULT_PORT = 123


PACKET = struct.Struct("!BBbbII4sQQQQ")


PACKET_BYTES = PACKET.size  # 48


# A reply up to its transmit timestamp, which is packed last.
_REPLY_HEAD = struct.Struct("!BBcbII4sQ8sQ")


_TIMESTAMP = struct.Struct("!Q")


MODE_UNDEFINED, MODE_CLIENT, MODE_SERVER = 0, 3, 4


LEAP_NONE, LEAP_INSERT, LEAP_DELETE, LEAP_UNSYNCHRONISED = 0, 1, 2, 3


MAX_STRATUM = 15  # 16 is "unsynchronised", sent as 0 on the wire


VERSIONS = range(1, 5)


NO_REFERENCE = bytes(4)  # a reference ID that names no server


# RFC 5905's MAXDIST: a reply whose root distance is more is refused (ntpd
# raises it to 1.5 s, chrony's maxdistance is 3 s).
MAX_DISTANCE = 1.0


NANOSECONDS = 1_000_000_000
FRACTION = 2**32  # an NTP timestamp's fraction: 2**32 to a second


class NtpError(ReplyError):
    """A reply the client must not use; the message says what the server said."""


class KissOfDeath(NtpError):
    """The server asks the client to stop or slow down (stratum 0, a code
    such as RATE or DENY); `code` is the code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"server sent a Kiss-o'-Death, code {code!r}")
        self.code = code


class NotSynchronised(NtpError):
    """The server says its clock is not synchronised: leap indicator 3, or
    stratum 0 with INIT, STEP or no code (chronyd without a source,
    openntpd before it has synchronised)."""


# Stratum 0 with these is a server that has no time yet, not a kiss.
UNSYNCHRONISED_CODES = ("INIT", "STEP", "")


def to_timestamp(unix_ns: int) -> int:
    """A time in nanoseconds since 1970 as an NTP timestamp (era folded)."""
    seconds, ns = divmod(unix_ns, NANOSECONDS)
    return (seconds + EPOCH_1900) % ERA << 32 | ns * FRACTION // NANOSECONDS


def from_timestamp(value: int, near_ns: int) -> int:
    """Nanoseconds since 1970 for an NTP timestamp, in the era nearest `near_ns`."""
    seconds = from_1900(value >> 32, near_ns / NANOSECONDS)
    fraction = ((value & 0xFFFF_FFFF) * NANOSECONDS + FRACTION // 2) // FRACTION
    return seconds * NANOSECONDS + fraction


def to_short(seconds: float) -> int:
    """Seconds in NTP's 16.16 short format, rounded up: a bound never shrinks."""
    return min(0xFFFF_FFFF, max(0, math.ceil(seconds * 65536)))


def from_short(value: int) -> float:
    """An NTP short format value (16.16 fixed point) as seconds."""
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
        """The packet as its 48 bytes on the wire."""
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
class ServerState:
    """What the server tells clients about its clock.

    `reference` is the reference timestamp: 0 for none (unsynchronised), or
    None for the second each request arrives in (a clock that is its own
    reference). `shorts` are the root delay and dispersion as a reply
    carries them, made once for all the replies that share the state.
    """

    leap: int
    stratum: int
    reference_id: bytes
    precision: int
    root_dispersion: float
    root_delay: float = 0.0
    reference: int | None = None
    shorts: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shorts = (to_short(self.root_delay), to_short(self.root_dispersion))
        object.__setattr__(self, "shorts", shorts)


@dataclass(frozen=True)
class Upstream:
    """What the server the kernel's clock follows says of its own clock: a
    reply to a query of it (from_reply()), or what an operator configured.
    `reference` is its reference timestamp, None where it is not known;
    `source_id` the reference ID that names that server itself (its
    address, as reference_id() makes it)."""

    leap: int
    stratum: int
    reference_id: bytes
    root_delay: float
    root_dispersion: float
    reference: int | None = None
    source_id: bytes = NO_REFERENCE

    @classmethod
    def from_reply(cls, reply: Packet, source_id: bytes = NO_REFERENCE) -> Upstream:
        """What a checked reply of the daemon lets the service claim, named
        `source_id`."""
        return cls(
            reply.leap,
            reply.stratum,
            reply.reference_id,
            from_short(reply.root_delay),
            from_short(reply.root_dispersion),
            reply.reference,
            source_id,
        )


def reference_id(text: str) -> bytes:
    """The reference ID that names a server: its IPv4 address, the first four
    bytes of the MD5 of its IPv6 address (RFC 5905), or a reference clock's
    code of up to four letters and digits (GPS, PPS); else ValueError."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if 1 <= len(text) <= 4 and text.isascii() and text.isalnum():
            return text.upper().encode("ascii").ljust(4, b"\0")
        raise ValueError(
            f"not an IP address nor a reference clock's code: {text!r}"
        ) from None
    if address.version == 4:
        return address.packed
    return hashlib.md5(address.packed, usedforsecurity=False).digest()[:4]


def precision_of(resolution: float) -> int:
    """The clock's precision as NTP encodes it: log2 seconds, rounded up."""
    return max(-32, math.ceil(math.log2(resolution)))


def request_version(packet: bytes, source_port: int | None = None) -> int | None:
    """The version of a request a server answers, or None: a 48-byte client
    packet of version 1 to 4, or an NTPv1 one.

    NTPv1 (RFC 1059) had no mode field, so its requests come as mode 0: as
    chrony does, one is a client's unless it comes from port 123 (a peer's),
    and it is answered in version 1 and server mode. An NTPv4 request may
    carry extension fields (RFC 7822), which the caller reads (NTS) or
    ignores; anything else (short, another mode, a MAC, which this server
    does not implement) is dropped.
    """
    if len(packet) != PACKET_BYTES:
        if len(packet) < PACKET_BYTES or packet[0] & 0x3F != 4 << 3 | MODE_CLIENT:
            return None
        try:
            read_fields(packet)
        except ValueError:  # a MAC, or not fields at all
            return None
        return 4
    version, mode = packet[0] >> 3 & 7, packet[0] & 7
    if mode == MODE_CLIENT and version in VERSIONS:
        return version
    if mode == MODE_UNDEFINED and version == 1 and source_port not in (None, 123):
        return version
    return None


def client_request(packet: bytes, source_port: int | None = None) -> Packet | None:
    """The request a server answers (see request_version()), or None."""
    if request_version(packet, source_port) is None:
        return None
    return Packet.unpack(packet[:PACKET_BYTES])


def server_reply(
    packet: bytes,
    state: ServerState,
    receive_ns: int,
    now_ns: Callable[[], int],
    source_port: int | None = None,
) -> bytes | None:
    """The 48-byte answer to a client's packet, or None to drop it.

    `receive_ns` is when the packet arrived; `now_ns` is read last, just
    before the reply goes out, for the transmit timestamp; `source_port` is
    where it came from (see request_version()).
    """
    head = reply_head(packet, state, receive_ns, source_port)
    return None if head is None else head + transmit_field(now_ns())


def reply_head(
    packet: bytes,
    state: ServerState,
    receive_ns: int,
    source_port: int | None = None,
    interleaved: bool = False,
) -> bytes | None:
    """The answer to a client's packet up to its transmit timestamp (40
    bytes), which transmit_field() makes as late as it can; None to drop it.

    `receive_ns` is when the packet arrived (its field: receive_field()).
    The origin is the request's transmit timestamp, or in an `interleaved`
    answer (RFC 9769) its receive timestamp. The request's poll and origin
    are copied as bytes: a server answers every datagram it is sent, so
    this is packed at once rather than field by field.
    """
    first = packet[0] if len(packet) == PACKET_BYTES else 0
    version = first >> 3 & 7  # request_version(), where it is plain
    if first & 7 != MODE_CLIENT or not 0 < version < 5:
        found = request_version(packet, source_port)
        if found is None:
            return None
        version = found
    # receive_field(), written out: a call costs more than the arithmetic.
    seconds, ns = divmod(receive_ns, NANOSECONDS)
    receive = (seconds + EPOCH_1900) % ERA << 32 | ns * FRACTION // NANOSECONDS | 1
    reference = state.reference
    if reference is None:  # its own reference: this second
        reference = receive & ~0xFFFF_FFFF
    root_delay, root_dispersion = state.shorts
    return _REPLY_HEAD.pack(
        state.leap << 6 | version << 3 | MODE_SERVER,
        state.stratum,
        packet[2:3],  # poll
        state.precision,
        root_delay,
        root_dispersion,
        state.reference_id,
        reference,
        packet[32:40] if interleaved else packet[40:48],  # origin
        receive,
    )


def receive_field(receive_ns: int) -> int:
    """A reply's receive timestamp, its lowest bit set: a transmit timestamp
    never has it (transmit_field()), so a request whose origin has it can
    only be interleaved, as chrony marks them (RFC 9769 allows it: the bit
    is a quarter of a nanosecond)."""
    return to_timestamp(receive_ns) | 1


def transmit_field(transmit_ns: int) -> bytes:
    """A reply's transmit timestamp, as its last 8 bytes: lowest bit clear,
    rounded up, so that it is after the receive timestamp of the same
    nanosecond (a coarse clock's, a clock of its own) whose bit is set.
    (to_timestamp(), written out: it is the last thing before the send.)"""
    seconds, ns = divmod(transmit_ns, NANOSECONDS)
    return _TIMESTAMP.pack(
        ((seconds + EPOCH_1900) % ERA << 32 | ns * FRACTION // NANOSECONDS | 1) + 1
    )


def looks_interleaved(packet: bytes) -> bool:
    """Whether a request asks for an interleaved answer (RFC 9769): an NTPv4
    client request whose origin is a receive timestamp of this server's
    (lowest bit set) and whose receive and transmit timestamps differ."""
    return (
        len(packet) == PACKET_BYTES
        and packet[0] & 0x3F == 4 << 3 | MODE_CLIENT
        and packet[31] & 1 == 1
        and packet[32:40] != packet[40:48]
    )


def origin_of(packet: bytes) -> int:
    """A packet's origin timestamp."""
    return int.from_bytes(packet[24:32], "big")


def kiss_of_death(
    packet: bytes, code: bytes = b"RATE", source_port: int | None = None
) -> bytes | None:
    """A Kiss-o'-Death answer (stratum 0, the code as reference ID), or None.

    It carries no time: receive and transmit repeat the client's own
    timestamp, as ntpd does.
    """
    request = client_request(packet, source_port)
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
