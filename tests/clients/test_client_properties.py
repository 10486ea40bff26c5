"""Targets given anything at all: a target or a ValueError, and they read back."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from timeservice import client, skew
from timeservice.clients import targets

ports = st.integers(0, 65535)


@given(st.text(max_size=40))
def test_any_text_is_a_target_or_a_value_error(text):
    try:
        target = skew.parse_target(text)
    except ValueError:
        return
    assert target.protocol in client.PORTS and target.host and 0 <= target.port <= 65535


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.text(string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=30),
)


@given(st.sampled_from(sorted(client.PORTS)), hosts, st.one_of(st.none(), ports))
def test_a_target_reads_back(protocol_name, host, port):
    text = f"{protocol_name}://{host}" + ("" if port is None else f":{port}")
    target = skew.parse_target(text)
    assert target.host == host.strip("[]")
    assert target.port == (client.PORTS[protocol_name] if port is None else port)
    assert targets.split_host_port(text.split("://")[1]) == (host.strip("[]"), port)
