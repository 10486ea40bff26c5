"""Who may ask: access lists as chrony's ``allow`` and ``deny`` decide them,
the most specific subnet that holds the address winning."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from ..wire.addresses import source_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def as_clients_are(network: Network) -> Network:
    """A subnet as the clients it names are matched: IPv4-mapped IPv6
    clients count as IPv4, so an IPv4-mapped subnet counts as IPv4 too
    (``::ffff:127.0.0.0/104`` is 127.0.0.0/8)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_subnet(text: str) -> Network:
    """``ADDRESS`` or ``ADDRESS/PREFIX``, IPv4 or IPv6; host bits are ignored."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 subnet: {text!r}") from None


class AccessList:
    """Allowed and denied subnets; the most specific subnet holding an address wins.

    For the same subnet given twice, the later rule wins. An address no
    subnet holds is denied if any subnet is allowed (``allow`` on its own
    means "only these"), and allowed otherwise. allows(host) remembers the
    answers for the `remembered` addresses asked most recently (its
    cache_info() says how many it holds): parsing one costs microseconds.
    """

    remembered = 4096
    allows: Callable[[str], bool]

    def __init__(
        self, rules: Iterable[tuple[Network, bool]], remembered: int | None = None
    ) -> None:
        latest: dict[Network, bool] = {}
        for given, allowed in rules:
            network = as_clients_are(given)
            latest.pop(network, None)
            latest[network] = allowed
        # Most specific first; a stable sort keeps the given order otherwise.
        self.rules = sorted(latest.items(), key=lambda rule: -rule[0].prefixlen)
        self.default = not any(allowed for _, allowed in self.rules)
        if remembered is not None:
            self.remembered = remembered
        # Whether the client at `host` (as the kernel wrote it) may ask.
        self.allows = functools.lru_cache(self.remembered)(self.decide)

    def unmatched(self, versions: Iterable[int]) -> list[tuple[Network, bool]]:
        """The rules that can match no client of a server that hears only
        IP `versions` (an IPv6 rule where every socket is IPv4)."""
        heard = set(versions)
        return [rule for rule in self.rules if rule[0].version not in heard]

    @classmethod
    def from_options(cls, allow: Iterable[str], deny: Iterable[str]) -> AccessList:
        """The list that ``--allow`` and ``--deny`` give, allows before denies.

        Only the same subnet in both could depend on the order: then the
        deny wins, as the safer reading.
        """
        return cls(
            [(parse_subnet(text), True) for text in allow]
            + [(parse_subnet(text), False) for text in deny]
        )

    @classmethod
    def of_options(cls, allow: Iterable[str], deny: Iterable[str]) -> AccessList | None:
        """What a program's ``--allow`` and ``--deny`` give: their list, or
        None where neither is given (everyone may ask, and nothing is
        looked up)."""
        return cls.from_options(allow, deny) if allow or deny else None

    def decide(self, host: str) -> bool:
        """Whether the client at `host` may ask, decided afresh (allows()
        remembers it)."""
        address = source_of(host).address
        for network, allowed in self.rules:
            if address in network:
                return allowed
        return self.default
