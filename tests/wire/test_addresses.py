"""Who a source is, said once: the key, the /64, the address rules match."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeservice.wire.addresses import source_of


@pytest.mark.parametrize(
    "host, key, network",
    [
        ("192.0.2.7", "192.0.2.7", None),
        ("2001:db8::1", "2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::ffff:1", "2001:db8::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7", None),
        ("fe80::1%lo", "fe80::1%lo", "fe80::/64%lo"),  # each link its own
        ("fe80::1%eth0", "fe80::1%eth0", "fe80::/64%eth0"),
        ("2001:db8::1%eth0", "2001:db8::1", "2001:db8::/64"),  # no link to name
    ],
)
def test_a_client_is_its_address_and_an_ipv6_one_its_slash_64_too(host, key, network):
    source = source_of(host)
    assert (source.key, source.network) == (key, network)


def test_what_is_no_address_is_a_value_error():
    with pytest.raises(ValueError):
        source_of("2001:db8::zz")
    with pytest.raises(ValueError):  # IPv4 as the kernel wrote it: read when matched
        assert source_of("example.org").address


@given(st.ip_addresses(v=6))
def test_an_ipv6_client_is_its_address_within_its_slash_64(address):
    source = source_of(str(address))
    if address.ipv4_mapped is not None:
        assert source.key == str(address.ipv4_mapped) and source.network is None
        assert source.address == address.ipv4_mapped
    else:
        assert ipaddress.ip_address(source.key) in ipaddress.ip_network(source.network)
        assert source.address == address
