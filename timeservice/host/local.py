"""This host's addresses and the UDP ports this process serves: the NTP
service never asks itself what to claim."""

from __future__ import annotations

import collections
import functools
import socket
import threading
from collections.abc import Callable

from ..wire.addresses import source_of


class LocalAddresses:
    """Whether an address is one of this host's: a loopback one, or one a
    socket can be bound to. is_local() remembers the answers for the
    `remembered` addresses asked most recently (its cache_info() says how
    many it holds), so that a flood costs one bind() per address at most."""

    remembered = 1024
    is_local: Callable[[str], bool]

    def __init__(self, remembered: int | None = None) -> None:
        if remembered is not None:
            self.remembered = remembered
        # Whether `host` (as the kernel wrote it) is this host's.
        self.is_local = functools.lru_cache(self.remembered)(self.decide)

    def __contains__(self, host: str) -> bool:
        return self.is_local(host)

    @staticmethod
    def decide(host: str) -> bool:
        """Whether `host` is this host's, found afresh by a bind()."""
        source = source_of(host)
        address = source.address
        if address.is_loopback or address.is_unspecified:
            return True
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        # A link-local address is bound on its interface: its key keeps its scope.
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((source.key, 0))
        except OSError:
            return False
        return True


class ServedPorts:
    """The UDP ports this process serves, for every datagram server in it:
    the NTP service does not ask one of them, on this host, what to claim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ports: collections.Counter[int] = collections.Counter()
        self.ports: frozenset[int] = frozenset()  # read without the lock

    def add(self, port: int) -> None:
        """Note a port that a server of this process now serves."""
        with self._lock:
            self._ports[port] += 1
            self.ports = frozenset(self._ports)

    def remove(self, port: int) -> None:
        """Forget a port once no server of this process serves it."""
        with self._lock:
            self._ports[port] -= 1
            if self._ports[port] <= 0:
                del self._ports[port]
            self.ports = frozenset(self._ports)


SERVED_PORTS = ServedPorts()


LOCAL_ADDRESSES = LocalAddresses()
