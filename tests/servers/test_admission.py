"""Whom the servers admit on the wire: access lists, and one host cannot hold
every connection."""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import (
    TIMEOUT,
    access,
    bounded,
    datagram_from,
    on_linux,
    read_all,
    timestamp,
)

from timeservice.server import (
    DaytimeHandler,
    NtpServer,
    OneShotServer,
    TimeHandler,
    TimeServer,
)
from timeservice.transport.datagram import DatagramServer
from timeservice.transport.pool import CONNECTION_THREAD
from timeservice.wire import ntp

# Access lists on the wire


def connect_from(server, source: str = "127.0.0.1") -> socket.socket:
    host, port = server.server_address[:2]
    return socket.create_connection(
        (host, port), timeout=TIMEOUT, source_address=(source, 0)
    )


@on_linux
def test_a_denied_client_gets_err_not_allowed_and_no_thread(start_server):
    server = start_server(access=access(["127.0.0.0/8"], ["127.0.0.2"]))
    with connect_from(server, "127.0.0.2") as denied:
        denied.sendall(b"send time\n")
        assert read_all(denied) == b"ERR not allowed\n"
    server.wait_finished()
    assert not [t for t in threading.enumerate() if t.name == CONNECTION_THREAD]
    with connect_from(server, "127.0.0.3") as allowed:
        allowed.sendall(b"send time\n")
        timestamp(allowed.makefile("rb").readline())
    assert server.refused == {"denied": 1}


@on_linux
def test_allow_alone_denies_everyone_else(start_server):
    server = start_server(access=access(["127.0.0.1"]))
    for source, allowed in (("127.0.0.1", True), ("127.0.0.2", False)):
        with connect_from(server, source) as sock:
            sock.sendall(b"send time\n")
            line = sock.makefile("rb").readline()
            assert (line != b"ERR not allowed\n") == allowed, (source, line)


def test_over_ipv6_and_dual_stack_the_list_holds(start_server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = start_server("::", access=access(["::1"], ["127.0.0.1"]))
    except OSError as exc:
        pytest.skip(f"cannot listen on '::': {exc}")
    for host, expected in (("::1", None), ("127.0.0.1", b"ERR not allowed\n")):
        port = server.server_address[1]
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"send time\n")
            line = sock.makefile("rb").readline()
            if expected is None:
                timestamp(line)
            else:
                assert line == expected


@pytest.mark.parametrize(
    "rules",
    [
        {"deny": ["::ffff:127.0.0.0/104"]},  # 2.0.0: never matched, everyone in
        {"allow": ["::1", "::ffff:127.0.0.2"]},  # 2.0.0: 127.0.0.2 refused
    ],
)
def test_a_rule_for_ipv4_mapped_addresses_names_the_ipv4_clients(serve, rules):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    line = serve(TimeServer, None, "::", access=access(**rules))
    ntp_server = serve(NtpServer, None, "::", local_stratum=10, access=access(**rules))
    port = line.server_address[1]
    allowed_v4 = "allow" in rules
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"send time\n")
        assert sock.makefile("rb").readline() == b"ERR not allowed\n"
    with socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)
    ) as sock:
        sock.sendall(b"send time\n")
        refused = sock.makefile("rb").readline() == b"ERR not allowed\n"
        assert refused != allowed_v4
    with datagram_from("127.0.0.1") as sock:
        sock.sendto(ntp.request_packet(1), ("127.0.0.1", ntp_server.server_address[1]))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.settimeout(TIMEOUT)
            probe.sendto(ntp.request_packet(2), ("::1", ntp_server.server_address[1]))
            assert probe.recv(512)  # ::1 is allowed either way; after 127.0.0.1's
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(512)
    assert ntp_server.refused == {"denied": 1}


@on_linux
def test_denied_daytime_and_time_are_closed_at_once_over_tcp(serve):
    rules = access(deny=["127.0.0.2"])
    for handler in (DaytimeHandler, TimeHandler):
        server = serve(OneShotServer, handler, access=rules)
        with connect_from(server, "127.0.0.2") as denied:
            assert read_all(denied) == b""
        with connect_from(server, "127.0.0.1") as allowed:
            assert read_all(allowed)
        assert server.refused == {"denied": 1}
        assert server.answered == 1


@on_linux
def test_denied_datagrams_get_nothing(serve):
    rules = access(deny=["127.0.0.2"])
    for server in (
        serve(DatagramServer, DaytimeHandler, access=rules),
        serve(NtpServer, None, access=rules, local_stratum=10),
    ):
        port = server.server_address[1]
        with datagram_from("127.0.0.2") as denied:
            denied.sendto(ntp.request_packet(0), ("127.0.0.1", port))
            # Datagrams are handled in order: once a later one is answered,
            # the denied one has been dealt with.
            with datagram_from("127.0.0.1") as allowed:
                allowed.sendto(ntp.request_packet(0), ("127.0.0.1", port))
                assert allowed.recv(512)
            denied.setblocking(False)
            with pytest.raises(BlockingIOError):
                denied.recv(512)
        assert server.refused == {"denied": 1}
        assert server.answered == 1


# One host cannot hold every connection


@on_linux
def test_one_host_gets_its_share_and_no_more(start_server, caplog):
    server = start_server(max_per_host=3, max_connections=10)
    held = [connect_from(server) for _ in range(3)]
    try:
        for sock in held:  # each is being served
            sock.sendall(b"send time\n")
            timestamp(sock.makefile("rb").readline())
        refusals = 50
        for _ in range(refusals):
            with connect_from(server) as extra:
                assert read_all(extra) == b"ERR busy\n"
        with connect_from(server, "127.0.0.2") as other_host:
            other_host.sendall(b"send time\n")
            timestamp(other_host.makefile("rb").readline())
        held.pop().close()
        server.wait_finished(refusals + 2)  # the refused, the other host, the one
        with connect_from(server) as again:  # the closed one's place is free
            again.sendall(b"send time\n")
            timestamp(again.makefile("rb").readline())
    finally:
        for sock in held:
            sock.close()
    assert server.refused == {"per_host": refusals}
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(logged) == 1  # one line for fifty; the rest is summed up at the close
    assert logged[0].endswith(": refused, too many connections from this host")


def test_the_summary_comes_at_the_close(start_server, caplog):
    server = start_server(max_connections=1, max_per_host=None)
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as held:
        held.sendall(b"send time\n")
        timestamp(held.makefile("rb").readline())
        for _ in range(20):
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as s:
                assert read_all(s) == b"ERR busy\n"
        server.wait_finished(20)
    bounded(server.shutdown)
    bounded(server.server_close)  # the fixture's second close does nothing more
    summaries = [
        r.getMessage() for r in caplog.records if "more client" in r.getMessage()
    ]
    assert len(summaries) == 1
    assert summaries[0].startswith("refused 19 more client(s) in ")
    assert "the server is at its connection limit; e.g. 127.0.0.1 port " in summaries[0]


def test_no_list_and_no_per_host_limit_admit_everyone(start_server):
    server = start_server(max_per_host=None)
    held = [socket.create_connection(server.server_address, timeout=TIMEOUT)]
    for _ in range(99):
        held.append(socket.create_connection(server.server_address, timeout=TIMEOUT))
    try:
        for sock in held:
            sock.sendall(b"send time\n")
        for sock in held:
            timestamp(sock.makefile("rb").readline())
    finally:
        for sock in held:
            sock.close()
    assert server.refused == {}
