"""This host's addresses and the UDP ports this process serves: the NTP
service never asks itself what to claim."""

from __future__ import annotations

import collections
import ipaddress
import socket
import threading


class LocalAddresses:
    """Whether an address is one of this host's: a loopback one, or one a
    socket can be bound to. The answers for the last `remembered` addresses
    are kept, so that a flood costs one bind() per address at most."""

    remembered = 1024

    def __init__(self) -> None:
        self._answers: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        answer = self._answers.get(host)
        if answer is None:
            if len(self._answers) >= self.remembered:
                self._answers.clear()
            answer = self._answers[host] = self._decide(host)
        return answer

    @staticmethod
    def _decide(host: str) -> bool:
        name, percent, scope = host.partition("%")
        address = ipaddress.ip_address(name)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_loopback or address.is_unspecified:
            return True
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        # A link-local address is bound on its interface: its scope stays.
        where = f"{address}{percent}{scope}" if address.version == 6 else str(address)
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((where, 0))
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
        with self._lock:
            self._ports[port] += 1
            self.ports = frozenset(self._ports)

    def remove(self, port: int) -> None:
        with self._lock:
            self._ports[port] -= 1
            if self._ports[port] <= 0:
                del self._ports[port]
            self.ports = frozenset(self._ports)


SERVED_PORTS = ServedPorts()


LOCAL_ADDRESSES = LocalAddresses()
