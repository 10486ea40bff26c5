"""Subnets and the addresses a client counts as, given anything at all."""

from __future__ import annotations

import ipaddress

from hypothesis import assume, given
from hypothesis import strategies as st

from timeservice.policy.access import AccessList, parse_subnet


@given(st.text(max_size=50))
def test_any_text_is_a_subnet_or_a_value_error(text):
    try:
        network = parse_subnet(text)
    except ValueError:
        return
    assert parse_subnet(str(network)) == network


@given(st.ip_addresses(), st.integers(0, 128))
def test_a_subnet_reads_back_and_holds_its_addresses(address, prefix):
    # An IPv4-mapped client is matched as the IPv4 address it is (by design).
    assume(getattr(address, "ipv4_mapped", None) is None)
    prefix = min(prefix, address.max_prefixlen)
    network = ipaddress.ip_network((address, prefix), strict=False)
    assert parse_subnet(str(network)) == network
    assert AccessList([(network, True)]).allows(str(address))
    assert not AccessList([(network, False)]).allows(str(address))
