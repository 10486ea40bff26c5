"""Who a source is, said once: the address a client counts as, the IPv6 /64
it shares a table entry with, and the address that rules match.

Every part that decides by source (the access list, what a source may get,
the connection caps, this host's own addresses) asks source_of(), so they
cannot disagree. An IPv4-mapped IPv6 address is the IPv4 client it is. A
scope is kept only where it names a link: fe80::1 on one interface is
another host than fe80::1 on the next, and each link-local /64 is its own.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import NamedTuple

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Source(NamedTuple):
    """Who a client is: `key` names it in every table, `network` is its IPv6
    /64 (None for IPv4)."""

    key: str
    network: str | None

    @property
    def address(self) -> Address:
        """The address that access rules match (without a link's scope)."""
        return ipaddress.ip_address(self.key.partition("%")[0])


def source_of(host: str) -> Source:
    """Who the client at `host` (an address as the kernel wrote it, IPv6 with
    its ``%scope`` if it has one) is; ValueError for an IPv6 text that is no
    address. An IPv4 address as the kernel wrote it needs no parsing."""
    if ":" not in host:
        return Source(host, None)
    return ipv6_source(host)


# An IPv6 address is parsed once for the many datagrams of one: a parse costs
# microseconds, a hit of the cache a fraction of one, and the cache holds at
# most this many (about 200 bytes each).
REMEMBERED = 1024


@functools.lru_cache(REMEMBERED)
def ipv6_source(host: str) -> Source:
    """source_of() for an IPv6 address (an IPv4-mapped one is IPv4)."""
    name, _, scope = host.partition("%")
    address = ipaddress.IPv6Address(name)
    mapped = address.ipv4_mapped
    if mapped is not None:
        return Source(str(mapped), None)
    prefix = ipaddress.IPv6Network((address, 64), strict=False)
    if address.is_link_local and scope:
        return Source(f"{address}%{scope}", f"{prefix}%{scope}")
    return Source(str(address), str(prefix))
