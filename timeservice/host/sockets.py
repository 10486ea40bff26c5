"""Who holds a UDP port on this host: the users that own the sockets bound to
it, read from Linux's /proc/net/udp and /proc/net/udp6.

A socket keeps the user it was made by: a daemon that binds as root and then
drops to its own user still shows root, which only root can arrange.
"""

from __future__ import annotations

import ipaddress
import sys

from . import capabilities

TABLES = ("/proc/net/udp", "/proc/net/udp6")


def _address(text: str) -> bytes:
    """A local address as /proc writes it: 32-bit words in host order, hex."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return raw


def udp_owners(host: str, port: int) -> set[int] | None:
    """The uids of the UDP sockets that `host` and `port` reach (bound to that
    address, or to every address); None where this platform cannot tell."""
    if capabilities.PORTABLE:
        return None
    wanted = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(wanted, "ipv4_mapped", None)
    if mapped is not None:
        wanted = mapped
    reached = {wanted.packed, bytes(len(wanted.packed))}  # it, or the wildcard
    if wanted.version == 4:  # a dual-stack socket hears IPv4 too
        reached |= {bytes(10) + b"\xff\xff" + wanted.packed, bytes(16)}
    owners: set[int] = set()
    read = False
    for table in TABLES:
        try:
            with open(table) as lines:
                next(lines, None)  # the heading
                rows = [line.split() for line in lines]
        except OSError:
            continue
        read = True
        for row in rows:
            if len(row) < 8:
                continue
            address, _, hex_port = row[1].partition(":")
            try:
                if int(hex_port, 16) == port and _address(address) in reached:
                    owners.add(int(row[7]))
            except ValueError:
                continue
    return owners if read else None
