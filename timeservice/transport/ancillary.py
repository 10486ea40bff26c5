"""What recvmsg() says beside a datagram, and sendmsg() is told: the kernel's
receive time (SO_TIMESTAMPNS) and the address it was sent to (IP_PKTINFO,
IPV6_PKTINFO), which a reply leaves from."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

# Linux's SO_TIMESTAMPNS and SCM_TIMESTAMPNS, which Python names from 3.14 on.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


_TIMESPEC = struct.Struct("@ll")


# Which address a datagram was sent to: Linux's IP_PKTINFO (Python names it
# from 3.12 on), IPV6_RECVPKTINFO to ask for IPV6_PKTINFO.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


_IN_PKTINFO = struct.Struct("@i4s4s")  # interface, local address, header's address


_IN6_PKTINFO = struct.Struct("@16sI")  # address, interface


# Room for the receive time and the address in recvmsg()'s ancillary data
# (no CMSG_SPACE on Windows).
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


_PKTINFO_SPACE = (
    socket.CMSG_SPACE(_IN6_PKTINFO.size) if hasattr(socket, "CMSG_SPACE") else 0
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


def answer_from(level: int, kind: int, value: bytes) -> list[tuple] | None:
    """The ancillary data that makes a reply leave from the address a datagram
    was sent to, from the IP_PKTINFO or IPV6_PKTINFO it came with; or None."""
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
        if len(value) == _IN_PKTINFO.size:
            # The local address routing picked for it; the interface is the
            # routing's choice again.
            _, local, _ = _IN_PKTINFO.unpack(value)
            return [(level, kind, _IN_PKTINFO.pack(0, local, bytes(4)))]
    elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
        if len(value) == _IN6_PKTINFO.size:
            # An IPv4 client of a dual-stack socket comes as a mapped
            # address, which IPV6_PKTINFO takes too. A link-local address
            # means something only on its interface.
            local, interface = _IN6_PKTINFO.unpack(value)
            if not ipaddress.IPv6Address(local).is_link_local:
                interface = 0
            return [(level, kind, _IN6_PKTINFO.pack(local, interface))]
    return None


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
