"""What recvmsg() says beside a datagram, and sendmsg() is told: the kernel's
receive time (SO_TIMESTAMPNS) and the address it was sent to (IP_PKTINFO,
IPV6_PKTINFO), which a reply leaves from and which must be this host's
alone: a broadcast or multicast request is not answered; and the kernel's
transmit time of a datagram sent (SO_TIMESTAMPING), which the socket's
error queue gives back with the datagram it stamped."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

# Linux's SO_TIMESTAMPNS and SCM_TIMESTAMPNS, which Python names from 3.14 on.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


_TIMESPEC = struct.Struct("@ll")


# Linux's SO_TIMESTAMPING (SCM_TIMESTAMPING too) and the flags of
# Documentation/networking/timestamping.rst: stamp this datagram when it
# leaves (per datagram, as sendmsg()'s ancillary data, Linux 4.7 on), report
# software stamps, and report only the receive stamps asked for (Linux 6.12
# on: without it every datagram received carries one more ancillary item).
SO_TIMESTAMPING = 37
TX_SOFTWARE, REPORT_SOFTWARE, RX_FILTER = 1 << 1, 1 << 4, 1 << 17
STAMP_THIS = (socket.SOL_SOCKET, SO_TIMESTAMPING, struct.pack("@i", TX_SOFTWARE))


_SCM_TIMESTAMPING = struct.Struct("@llllll")  # software, legacy, hardware


# struct sock_extended_err: errno, origin, type, code, pad, info, data.
_EXTENDED_ERROR = struct.Struct("@IBBBBII")
_RECVERR = {(socket.IPPROTO_IP, 11), (getattr(socket, "IPPROTO_IPV6", 41), 25)}
_ORIGIN_TIMESTAMPING, _SENT = 4, 0  # SO_EE_ORIGIN_TIMESTAMPING, SCM_TSTAMP_SND


# Which address a datagram was sent to: Linux's IP_PKTINFO (Python names it
# from 3.12 on), IPV6_RECVPKTINFO to ask for IPV6_PKTINFO.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


_IN_PKTINFO = struct.Struct("@i4s4s")  # interface, local address, header's address


_IN6_PKTINFO = struct.Struct("@16sI")  # address, interface


# Room for the receive time and the address in recvmsg()'s ancillary data
# (no CMSG_SPACE on Windows).
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


# The receive stamp a socket that reports software stamps gets on every
# datagram where the kernel cannot be told to leave it out.
_SCM_TIMESTAMPING_SPACE = (
    socket.CMSG_SPACE(_SCM_TIMESTAMPING.size) if hasattr(socket, "CMSG_SPACE") else 0
)


# What the error queue's ancillary data may hold: both stamps and the error.
ERROR_QUEUE_SPACE = 256


_PKTINFO_SPACE = (  # a dual-stack socket's IPv4 clients come with both
    socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)
    if hasattr(socket, "CMSG_SPACE")
    else 0
)


def stamp_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time in recvmsg()'s ancillary data, if it is there."""
    for level, kind, value in ancillary:
        if (
            level == socket.SOL_SOCKET
            and kind == SO_TIMESTAMPNS
            and len(value) == _TIMESPEC.size
        ):
            seconds, ns = _TIMESPEC.unpack(value)
            return seconds * 1_000_000_000 + ns
    return None


def transmit_stamp_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's transmit time in an error queue message's ancillary
    data, if it is a software stamp of a datagram sent; None otherwise."""
    stamp = sent = None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
            if len(value) >= _SCM_TIMESTAMPING.size:
                seconds, ns = _SCM_TIMESTAMPING.unpack_from(value)[:2]
                stamp = seconds * 1_000_000_000 + ns
        elif (level, kind) in _RECVERR and len(value) >= _EXTENDED_ERROR.size:
            _, origin, _, _, _, info, _ = _EXTENDED_ERROR.unpack_from(value)
            sent = origin == _ORIGIN_TIMESTAMPING and info == _SENT
    return stamp if sent and stamp else None


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _shared(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address names more than one host: multicast or broadcast."""
    return address.is_multicast or address == _LIMITED_BROADCAST


def answer_from(items: list[tuple[int, int, bytes]]) -> tuple[list[tuple] | None, bool]:
    """From the IP_PKTINFO and IPV6_PKTINFO a datagram came with: the
    ancillary data that makes a reply leave from the address it was sent to
    (None if the kernel did not say), and whether that address was this
    host's alone, not a broadcast or multicast one.

    IP_PKTINFO gives both the header's destination and the local address
    routing picked: they are the same for a datagram sent to this host, and
    differ for a broadcast to a subnet (127.255.255.255, 192.0.2.255) as for
    every broadcast and multicast. IPV6_PKTINFO gives the header's
    destination, for IPv4 clients of a dual-stack socket as a mapped address.
    """
    send: list[tuple] | None = None
    unicast = True
    for level, kind, value in items:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            if len(value) != _IN_PKTINFO.size:
                continue
            _, local, header = _IN_PKTINFO.unpack(value)
            if header != local or _shared(ipaddress.IPv4Address(header)):
                unicast = False
            if send is None:  # an IPv4 socket's; a dual-stack one's is below
                # The interface is the routing's choice again.
                send = [(level, kind, _IN_PKTINFO.pack(0, local, bytes(4)))]
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            if len(value) != _IN6_PKTINFO.size:
                continue
            local, interface = _IN6_PKTINFO.unpack(value)
            address = ipaddress.IPv6Address(local)
            if _shared(address.ipv4_mapped or address):
                unicast = False
            # IPV6_PKTINFO takes a mapped address too; a link-local address
            # means something only on its interface.
            if not address.is_link_local:
                interface = 0
            send = [(level, kind, _IN6_PKTINFO.pack(local, interface))]
    return send, unicast


def kernel_stamps_agree() -> bool:
    """Whether the kernel's receive times are on this process's clock.

    Tools like faketime shift the process's clock, not the kernel's, by any
    amount; a datagram sent to this process itself must be stamped between
    the clock's reads before and after it.
    """
    try:
        sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    except (OSError, AttributeError):  # no Unix datagram sockets here
        return False
    with sender, receiver:
        try:
            receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            receiver.settimeout(1.0)  # it is there at once; never wait long
            before = time.time_ns()
            sender.send(b"?")
            _, ancillary, _, _ = receiver.recvmsg(1, _STAMP_SPACE)
            after = time.time_ns()
        except OSError:
            return False
    stamp = stamp_of(ancillary)
    return stamp is not None and before <= stamp <= after


def is_wildcard(address: tuple) -> bool:
    """Whether a socket bound to `address` receives for every local address."""
    try:
        return ipaddress.ip_address(address[0].split("%")[0]).is_unspecified
    except ValueError:  # not an address: a name, which a bind resolves to one
        return False
