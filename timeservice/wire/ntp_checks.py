"""An NTP client's checks of a server's reply (RFC 5905's packet tests, as
chrony makes them): what it must refuse, and why, in words a user reads."""

from __future__ import annotations

from .ntp import (
    LEAP_UNSYNCHRONISED,
    MAX_DISTANCE,
    MAX_STRATUM,
    MODE_SERVER,
    UNSYNCHRONISED_CODES,
    VERSIONS,
    KissOfDeath,
    NotSynchronised,
    NtpError,
    Packet,
)

_HALF_ERA = 2**63  # NTP timestamps compare as differences in 64 bits


def earlier(a: int, b: int) -> bool:
    """Whether NTP timestamp `a` is before `b`, across an era's wrap too."""
    return (a - b) % 2**64 >= _HALF_ERA


def check_reply(
    data: bytes, request: bytes, max_distance: float = MAX_DISTANCE
) -> Packet:
    """The server's reply to `request` if a client may use it; else NtpError.

    RFC 5905's packet tests, as chrony makes them: the origin is the
    request's transmit timestamp, it is a server packet of version 1 to 4,
    not a Kiss-o'-Death (KissOfDeath), synchronised (else NotSynchronised),
    stratum 1 to 15, with receive and transmit timestamps, the one not after
    the other, and a root distance, with the server's precision in it as
    RFC 5905's has it, no more than `max_distance` (MAXDIST by default).
    """
    try:
        reply = Packet.unpack(data)
    except ValueError as exc:
        raise NtpError(f"short reply: {exc}") from None
    if reply.origin != Packet.unpack(request).transmit:
        raise NtpError("reply does not answer our request (origin timestamp differs)")
    if reply.mode != MODE_SERVER:
        raise NtpError(f"not a server reply (mode {reply.mode})")
    if reply.version not in VERSIONS:
        raise NtpError(f"NTP version {reply.version}, not 1 to 4")
    code = reply.reference_id.decode("ascii", "replace").rstrip("\0")
    if reply.stratum == 0 and code not in UNSYNCHRONISED_CODES:
        raise KissOfDeath(code)
    if reply.leap == LEAP_UNSYNCHRONISED or reply.stratum == 0:
        raise NotSynchronised(
            f"server says its clock is not synchronised (leap indicator "
            f"{reply.leap}, stratum {reply.stratum}, reference ID {code!r})"
        )
    if reply.stratum > MAX_STRATUM:
        raise NtpError(f"server stratum {reply.stratum} is not 1 to {MAX_STRATUM}")
    if reply.transmit == 0:
        raise NtpError("server sent no transmit timestamp")
    if reply.receive == 0:
        raise NtpError("server sent no receive timestamp")
    if earlier(reply.transmit, reply.receive):
        raise NtpError("server says it answered before it received the request")
    distance = reply.root_distance + 2.0**reply.precision
    if distance > max_distance:
        shown = f"{distance:.3f}" if distance < 1e6 else f"{distance:.3g}"
        raise NtpError(
            f"server's root distance {shown} s is more than "
            f"{max_distance:g} s: its time is too uncertain to use"
        )
    return reply
