"""This host's addresses and the UDP ports this process serves: a datagram
from both is another service's answer, and answering it would start a loop."""

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
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_loopback or address.is_unspecified:
            return True
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((str(address), 0))
        except OSError:
            return False
        return True


class ServedPorts:
    """The UDP ports this process serves, for every datagram server in it:
    a datagram from one of them, sent from this host, is another service's
    answer, and answering it would start a loop between the two."""

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
