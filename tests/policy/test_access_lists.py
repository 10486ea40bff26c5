"""Access lists by hand: the most specific subnet wins; whom a client counts as."""

from __future__ import annotations

import ipaddress

import pytest
from conftest import access

from timeservice.policy.access import AccessList, parse_subnet


@pytest.mark.parametrize(
    "allow, deny, expected",
    [
        # allow alone: only these
        (["192.0.2.0/24"], [], {"192.0.2.7": True, "198.51.100.1": False}),
        # deny alone: everyone else
        ([], ["192.0.2.0/24"], {"192.0.2.7": False, "198.51.100.1": True}),
        # the most specific subnet wins, either way round
        (
            ["192.0.2.0/24", "192.0.2.128"],
            ["192.0.2.128/25"],
            {"192.0.2.1": True, "192.0.2.129": False, "192.0.2.128": True},
        ),
        (
            ["10.0.0.0/8"],
            ["10.1.0.0/16"],
            {"10.2.3.4": True, "10.1.3.4": False, "11.0.0.1": False},
        ),
        # the same subnet in both: the deny wins
        (["192.0.2.0/24"], ["192.0.2.0/24"], {"192.0.2.7": False}),
        # IPv6, and IPv4 as a dual-stack socket writes it
        (
            ["2001:db8::/32"],
            ["2001:db8:1::/48"],
            {
                "2001:db8:2::1": True,
                "2001:db8:1::1": False,
                "2001:db8:1::1%eth0": False,
                "::ffff:192.0.2.7": False,
            },
        ),
        ([], ["192.0.2.7"], {"::ffff:192.0.2.7": False, "::ffff:192.0.2.8": True}),
        # host bits in a subnet are ignored, as chrony ignores them
        (["192.0.2.77/24"], [], {"192.0.2.1": True}),
    ],
)
def test_the_most_specific_subnet_wins(allow, deny, expected):
    rules = access(allow, deny)
    assert {host: rules.allows(host) for host in expected} == expected


def test_for_the_same_subnet_the_later_rule_wins():
    net = ipaddress.ip_network("192.0.2.0/24")
    assert not AccessList([(net, True), (net, False)]).allows("192.0.2.1")
    assert AccessList([(net, False), (net, True)]).allows("192.0.2.1")


def test_answers_are_remembered_for_a_bounded_number_of_addresses():
    rules = AccessList.from_options(["192.0.2.0/24"], [])
    rules = AccessList(rules.rules, remembered=3)
    hosts = [f"192.0.2.{n}" for n in range(5)] + ["198.51.100.1"]
    assert [rules.allows(h) for h in hosts] == [True] * 5 + [False]
    assert rules.allows.cache_info().currsize == 3
    assert [rules.allows(h) for h in hosts] == [True] * 5 + [False]  # the same


def test_a_subnet_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 subnet: '192.0.2.0/33'"):
        parse_subnet("192.0.2.0/33")


@pytest.mark.parametrize(
    "rule, client, matched",
    [
        ("::ffff:127.0.0.0/104", "127.0.0.1", True),
        ("::ffff:127.0.0.0/104", "::ffff:127.0.0.9", True),
        ("::ffff:192.0.2.7", "192.0.2.7", True),
        ("::ffff:192.0.2.7", "192.0.2.8", False),
        ("::ffff:0:0/96", "198.51.100.1", True),  # every IPv4 client
        ("::/0", "192.0.2.7", False),  # IPv6 clients: not the IPv4 ones
    ],
)
def test_a_rule_for_ipv4_mapped_addresses_matches_the_ipv4_clients(
    rule, client, matched
):
    assert access(deny=[rule]).allows(client) != matched


def test_the_rules_a_server_cannot_hear_are_named():
    rules = access(["192.0.2.0/24", "2001:db8::/32"], ["::ffff:10.0.0.0/104"])
    assert [str(n) for n, _ in rules.unmatched({4})] == ["2001:db8::/32"]
    assert [str(n) for n, _ in rules.unmatched({6})] == ["192.0.2.0/24", "10.0.0.0/8"]
    assert rules.unmatched({4, 6}) == []


def test_a_program_without_allow_or_deny_checks_nothing():
    assert AccessList.of_options([], []) is None
    rules = AccessList.of_options([], ["192.0.2.0/24"])
    assert rules is not None
    assert not rules.allows("192.0.2.7") and rules.allows("198.51.100.1")
