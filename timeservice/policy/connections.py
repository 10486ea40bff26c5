"""How many connections a stream server holds, in all, per address and per
IPv6 /64, the /64's share given fairly among its hosts."""

from __future__ import annotations

import collections

from ..wire.addresses import source_of


class ConnectionLimits:
    """How many connections a stream server holds: at most `most` in all,
    `per_host` from one address and `per_network` from one IPv6 /64 (None
    for no such limit).

    A /64 at its limit is shared fairly: a newcomer with fewer connections
    than the address of the /64 that holds the most is let in, and one of
    that address's connections is cut (admit() names it), so that a host
    flooding from several addresses of a LAN cannot lock the other hosts
    out, and a host rotating through its /64 still holds no more than
    `per_network`. Not thread-safe: the server holds its lock.
    """

    def __init__(
        self, most: int, per_host: int | None, per_network: int | None
    ) -> None:
        self.most, self.per_host, self.per_network = most, per_host, per_network
        self.open = 0
        self._per_key: dict[str, int] = {}
        self._hosts: dict[str, collections.Counter[str]] = {}  # a /64's addresses

    def keys(self, address: tuple) -> tuple[str, ...]:
        """The keys a connection from `address` counts under: its address,
        then its /64 if IPv6; none where no limit needs them."""
        if self.per_host is None and self.per_network is None:
            return ()
        source = source_of(address[0])
        if source.network is None:
            return (source.key,)
        return (source.key, source.network)

    def admit(self, keys: tuple[str, ...]) -> tuple[str | None, str | None]:
        """Why one more connection under `keys` would be too many (busy,
        per_host or per_network), or None; and, where its /64 is full, the
        address of that /64 one of whose connections it takes the place of."""
        if self.open >= self.most:
            return "busy", None
        if not keys:
            return None, None
        held = self._per_key.get(keys[0], 0)
        if self.per_host is not None and held >= self.per_host:
            return "per_host", None
        if len(keys) < 2 or self.per_network is None:
            return None, None
        if self._per_key.get(keys[1], 0) < self.per_network:
            return None, None
        hosts = self._hosts[keys[1]]
        heaviest, most = hosts.most_common(1)[0]
        if most > held + 1:
            return None, heaviest
        return "per_network", None

    def refusal(self, keys: tuple[str, ...]) -> str | None:
        """Why one more connection under `keys` would be too many, where no
        connection can be cut to make room; None if it may open."""
        cause, displaced = self.admit(keys)
        return "per_network" if displaced is not None else cause

    def add(self, keys: tuple[str, ...]) -> None:
        """Count one more connection under `keys`."""
        self.open += 1
        self._count(keys, 1)

    def remove(self, keys: tuple[str, ...]) -> None:
        """Count one connection under `keys` closed."""
        self.open -= 1
        self._count(keys, -1)

    def displace(self, keys: tuple[str, ...]) -> None:
        """Stop counting a connection under `keys` that is being cut to make
        room; it stays in the count of all until remove(()) when it closes."""
        self._count(keys, -1)

    def _count(self, keys: tuple[str, ...], step: int) -> None:
        for key in keys:
            left = self._per_key.get(key, 0) + step
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]
        if len(keys) == 2:
            hosts = self._hosts.setdefault(keys[1], collections.Counter())
            hosts[keys[0]] += step
            if not hosts[keys[0]]:
                del hosts[keys[0]]
                if not hosts:
                    del self._hosts[keys[1]]
