"""The skew check's targets."""

from __future__ import annotations

import re

import pytest

from timeservice.skew import Target, parse_target


@pytest.mark.parametrize(
    "text, protocol, host, port",
    [
        ("192.0.2.1", "line", "192.0.2.1", 8037),
        ("192.0.2.1:9000", "line", "192.0.2.1", 9000),
        ("ntp://time.example", "ntp", "time.example", 123),
        ("ntp://[2001:db8::1]:123", "ntp", "2001:db8::1", 123),
        ("time://[2001:db8::1]", "time", "2001:db8::1", 37),
        ("daytime://host:13", "daytime", "host", 13),
        ("line://[::1]:8037", "line", "::1", 8037),
    ],
)
def test_targets(text, protocol, host, port):
    assert parse_target(text) == Target(text, protocol, host, port)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("smtp://host", "unknown protocol 'smtp'"),
        ("2001:db8::1", "brackets"),
        ("ntp://[2001:db8::1", "brackets"),
        ("ntp://[2001:db8::1]x", "brackets"),
        ("ntp://:123", "no host"),
        ("host:http", "not a port number: 'http'"),
        ("host:65536", "not a port number"),
    ],
)
def test_bad_targets(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_target(text)
