"""Running it as operators run a time daemon: access lists, per-host limits,
summarised logs, metrics, a dropped root and systemd's socket activation.

Clients from other hosts are loopback addresses other than 127.0.0.1 (all of
127.0.0.0/8 is loopback on Linux), or the hosts of a network namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    bounded,
    free_port,
    needs_sigterm,
    one_line,
    readline_within,
    server_process,
    timestamp,
)

from timeservice import client
from timeservice.operations import privileges, systemd
from timeservice.operations.metrics import collect, render
from timeservice.policy.access import AccessList, address_key, network_key, parse_subnet
from timeservice.policy.logs import RefusalLog
from timeservice.programs import opening, server_options
from timeservice.programs import server as server_program
from timeservice.programs.options import metrics_address
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

on_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="clients from 127.0.0.2 and up: all of 127/8 is loopback on Linux",
)
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root (to bind ports below 1024, or to become another user)",
)


def access(allow=(), deny=()) -> AccessList:
    return AccessList.from_options(allow, deny)


# The access list, by hand


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
    rules = access(["192.0.2.0/24"])
    rules.remembered = 3
    hosts = [f"192.0.2.{n}" for n in range(5)] + ["198.51.100.1"]
    assert [rules.allows(h) for h in hosts] == [True] * 5 + [False]
    assert len(rules._answers) <= 3
    assert [rules.allows(h) for h in hosts] == [True] * 5 + [False]  # the same


def test_a_subnet_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 subnet: '192.0.2.0/33'"):
        parse_subnet("192.0.2.0/33")


@pytest.mark.parametrize(
    "address, key, network",
    [
        (("192.0.2.7", 1), "192.0.2.7", None),
        (("2001:db8::1", 1, 0, 0), "2001:db8::1", "2001:db8::/64"),
        (("2001:db8::ffff:1", 5), "2001:db8::ffff:1", "2001:db8::/64"),
        (("::ffff:192.0.2.7", 1, 0, 0), "192.0.2.7", None),
        (("fe80::1%lo", 5, 0, 1), "fe80::1", "fe80::/64"),
    ],
)
def test_a_client_is_its_address_and_an_ipv6_one_its_slash_64_too(
    address, key, network
):
    assert (address_key(address), network_key(address)) == (key, network)


# The summarised log, by hand


def test_refusals_are_logged_once_then_counted(caplog):
    caplog.set_level(logging.INFO, logger="timeservice")
    log = RefusalLog(interval=60, examples=2)
    for n in range(1000):
        log.note("busy", f"192.0.2.{n % 5} port 9", now=100.0 + n / 100)
    log.note("denied", "198.51.100.1 port 9", now=105.0)
    assert [r.getMessage() for r in caplog.records] == [
        "192.0.2.0 port 9: refused, the server is at its connection limit",
        "198.51.100.1 port 9: refused, not allowed by the access list",
    ]
    caplog.clear()
    log.flush(now=159.9)  # no interval over yet
    assert caplog.records == []
    log.flush(now=160.0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "refused 999 more client(s) in 60 s, the server is at its "
            "connection limit; e.g. 192.0.2.1 port 9, 192.0.2.2 port 9",
        )
    ]
    caplog.clear()
    log.note("busy", "192.0.2.9 port 9", now=161.0)  # a new interval
    log.flush(now=200.0, force=True)  # the denied one had no others
    assert [r.getMessage() for r in caplog.records] == [
        "192.0.2.9 port 9: refused, the server is at its connection limit"
    ]


def test_a_new_interval_first_reports_the_last_one(caplog):
    caplog.set_level(logging.INFO, logger="timeservice")
    log = RefusalLog(interval=10)
    for now in (0.0, 1.0, 2.0, 30.0):
        log.note("rate_limited", "192.0.2.1 port 123", now=now)
    assert [r.getMessage() for r in caplog.records] == [
        "192.0.2.1 port 123: refused, over its rate limit",
        "refused 2 more client(s) in 10 s, over its rate limit; "
        "e.g. 192.0.2.1 port 123",
        "192.0.2.1 port 123: refused, over its rate limit",
    ]


# Access lists on the wire


def connect_from(server, source: str = "127.0.0.1") -> socket.socket:
    host, port = server.server_address[:2]
    return socket.create_connection(
        (host, port), timeout=TIMEOUT, source_address=(source, 0)
    )


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


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


@contextlib.contextmanager
def datagram_from(source: str) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        yield sock


@pytest.fixture
def serve(serving):
    def start(server_class, handler, **settings):
        if handler is None:
            return serving(server_class(("127.0.0.1", 0), **settings))
        return serving(server_class(("127.0.0.1", 0), handler, **settings))

    return start


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


# Metrics


def test_the_text_format_by_hand():
    text = render(
        [
            (
                "x_total",
                "counter",
                "Things.",
                [({"a": 'q"\\\n'}, 1), ({"a": 'q"\\\n'}, 2)],
            ),
            ("y_seconds", "gauge", "Time.", [({}, 0.25)]),
            ("z", "gauge", "Nothing yet.", []),
        ]
    )
    assert text == (
        "# HELP x_total Things.\n"
        "# TYPE x_total counter\n"
        'x_total{a="q\\"\\\\\\n"} 3\n'
        "# HELP y_seconds Time.\n"
        "# TYPE y_seconds gauge\n"
        "y_seconds 0.25\n"
        "# HELP z Nothing yet.\n"
        "# TYPE z gauge\n"
    )


@pytest.mark.parametrize(
    "text, address",
    [
        ("9123", ("127.0.0.1", 9123)),
        ("0.0.0.0:9123", ("0.0.0.0", 9123)),
        ("[::]:9123", ("::", 9123)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_the_metrics_address(text, address):
    assert metrics_address(text) == address


@pytest.mark.parametrize("text", ["::1:9123", "x", "1.2.3.4:", ":80", "1.2.3.4:65536"])
def test_a_bad_metrics_address_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(["--metrics", text])
    assert exit_info.value.code == 2
    assert "--metrics" in capsys.readouterr().err


def scrape(port: int) -> dict[tuple, float]:
    """The metrics as prometheus_client's parser reads them: (name, labels) -> value."""
    parser = pytest.importorskip("prometheus_client.parser")
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        assert family.name.startswith("timeservice_")
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(protocol: str, transport: str, **more: str) -> tuple:
    return tuple(sorted({"protocol": protocol, "transport": transport, **more}.items()))


SERVING = re.compile(r"Serving (.+?) on 127\.0\.0\.1 port (\d+)")


@on_linux
@needs_sigterm
def test_the_metrics_move_with_the_traffic():
    options = ("--daytime", "0", "--ntp", "0", "--local-stratum", "10")
    more = ("--metrics", "0", "--deny", "127.0.0.2", "--max-per-host", "1")
    with server_process("0", *options, *more) as (process, line_port):
        ports = {}
        for _ in range(3):
            name, port = SERVING.match(readline_within(process.stdout)).groups()
            ports[name] = int(port)
        metrics = ports["metrics"]
        before = scrape(metrics)
        assert before[("timeservice_requests_total", labels("line", "tcp"))] == 0
        assert before[("timeservice_clock_synchronised", ())] == 1  # local stratum
        assert before[("timeservice_threads", ())] >= 3

        with socket.create_connection(
            ("127.0.0.1", line_port), timeout=TIMEOUT
        ) as sock:
            lines = sock.makefile("rb")
            sock.sendall(b"send time\nhello\nsend time\n")
            for _ in range(3):
                lines.readline()
            during = scrape(metrics)
            with socket.create_connection(("127.0.0.1", line_port)) as second:
                second.settimeout(TIMEOUT)
                assert read_all(second) == b"ERR busy\n"
        with socket.create_connection(
            ("127.0.0.1", line_port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)
        ) as denied:
            assert read_all(denied) == b"ERR not allowed\n"
        client.ask_daytime("127.0.0.1", ports["daytime"])
        client.ask_daytime("127.0.0.1", ports["daytime"], udp=True)
        client.ask_ntp("127.0.0.1", ports["NTP"])
        with datagram_from("127.0.0.1") as garbage:
            garbage.sendto(b"not ntp", ("127.0.0.1", ports["NTP"]))
            client.ask_ntp("127.0.0.1", ports["NTP"])  # after the garbage, in order

        after = scrape(metrics)
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    assert during[("timeservice_open_connections", labels("line", "tcp"))] == 1
    changed = {key: after[key] - before.get(key, 0) for key in after}
    expected = {
        ("timeservice_requests_total", labels("line", "tcp")): 3,
        ("timeservice_requests_total", labels("daytime", "tcp")): 1,
        ("timeservice_requests_total", labels("daytime", "udp")): 1,
        ("timeservice_requests_total", labels("ntp", "udp")): 2,
        (
            "timeservice_errors_total",
            labels("line", "tcp", reason="unknown request, expected 'send time'"),
        ): 1,
        (
            "timeservice_errors_total",
            labels("ntp", "udp", reason="not an NTP client request"),
        ): 1,
        ("timeservice_refused_total", labels("line", "tcp", cause="per_host")): 1,
        ("timeservice_refused_total", labels("line", "tcp", cause="denied")): 1,
    }
    assert {key: changed[key] for key in expected} == expected


def test_only_metrics_is_served(serving):
    from timeservice.operations.metrics import MetricsServer

    line = serving(TimeServer(("127.0.0.1", 0)))
    metrics = serving(MetricsServer(("127.0.0.1", 0), [line]))
    port = metrics.server_address[1]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT)
    error.value.close()
    assert error.value.code == 404
    assert scrape(port)[("timeservice_requests_total", labels("line", "tcp"))] == 0


def metrics_server(serving, **settings):
    from timeservice.operations.metrics import MetricsServer

    line = serving(TimeServer(("127.0.0.1", 0)))
    return serving(MetricsServer(("127.0.0.1", 0), [line], **settings))


def http_get(port: int, head: bytes = b"", source: str = "127.0.0.1") -> bytes:
    """What the endpoint answers to a GET of /metrics with `head` as headers."""
    with connect_from_address(port, source) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n" + head + b"\r\n")
        return read_all(sock)


def connect_from_address(port: int, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    )


def test_a_request_head_over_its_limit_is_refused(serving):
    metrics = metrics_server(serving)
    port = metrics.server_address[1]
    assert http_get(port).startswith(b"HTTP/1.0 200 ")
    big = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"x" * 1000) for n in range(9))
    assert http_get(port, big).startswith(b"HTTP/1.0 431 ")  # past 8 KiB
    assert http_get(port).startswith(b"HTTP/1.0 200 ")


def test_a_request_head_has_a_deadline_for_the_whole(serving):
    metrics = metrics_server(serving, request_seconds=0.3)
    with connect_from_address(metrics.server_address[1], "127.0.0.1") as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n")  # and never the blank line
        assert read_all(sock) == b""  # closed at the deadline, not 10 s a read


def test_the_endpoint_serves_a_bounded_number_of_connections(serving):
    metrics = metrics_server(serving, max_connections=2)
    port = metrics.server_address[1]
    holding = [connect_from_address(port, "127.0.0.1") for _ in range(2)]
    try:
        for sock in holding:  # both are served: each waits in its thread
            sock.sendall(b"GET /metrics HTTP/1.0\r\n")
        with connect_from_address(port, "127.0.0.1") as third:
            assert read_all(third) == b""  # closed at once
        assert metrics.refused["busy"] >= 1
    finally:
        for sock in holding:
            sock.close()
    for _ in range(100):  # the places come free as the held connections end
        if http_get(port).startswith(b"HTTP/1.0 200 "):
            break
    else:
        raise AssertionError("no place came free")


def test_the_access_list_applies_to_the_metrics(serving):
    metrics = metrics_server(serving, access=AccessList.from_options([], ["127.0.0.2"]))
    port = metrics.server_address[1]
    with connect_from_address(port, "127.0.0.2") as denied:
        assert read_all(denied) == b""  # closed before it could ask
    assert http_get(port).startswith(b"HTTP/1.0 200 ")
    assert metrics.refused == {"denied": 1}


def test_a_scraper_that_resets_is_one_line_at_most(serving, capfd, caplog):
    metrics = metrics_server(serving)
    port = metrics.server_address[1]
    for _ in range(3):
        with connect_from_address(port, "127.0.0.1") as sock:
            sock.sendall(b"GET /metr")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    assert http_get(port).startswith(b"HTTP/1.0 200 ")
    assert "Traceback" not in capfd.readouterr().err
    assert all(record.exc_info is None for record in caplog.records)


def test_without_an_ntp_service_the_clock_is_read_from_the_kernel(monkeypatch):
    from timeservice.clock import kernel as kernelclock

    monkeypatch.setattr(
        kernelclock, "read", lambda: kernelclock.KernelState(True, 0, 0.125)
    )
    families = {name: samples for name, _, _, samples in collect([])}
    assert families["timeservice_clock_synchronised"] == [({}, 1)]
    assert families["timeservice_clock_maximum_error_seconds"] == [({}, 0.125)]
    monkeypatch.setattr(kernelclock, "read", lambda: None)
    families = {name: samples for name, _, _, samples in collect([])}
    assert families["timeservice_clock_synchronised"] == [({}, 0)]
    assert "timeservice_clock_maximum_error_seconds" not in families


# Privileged ports without staying root


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A network namespace of the test's own, with only loopback; removed after."""
    name = f"tsop{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=TIMEOUT)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=TIMEOUT
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=TIMEOUT)


def client_in(namespace: str, *args: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "timeservice.client"]
        + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_of(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as status:
        return {
            key: value.split()
            for key, _, value in (line.partition(":") for line in status)
        }


@pytest.mark.slow
@needs_root
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (Debian: iproute2)")
def test_the_standard_ports_are_served_as_nobody(monkeypatch):
    import pwd

    # Measured by coverage, the server would try to write its data as nobody.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    nobody = pwd.getpwnam("nobody")
    options = (
        "--daytime",
        "13",
        "--time",
        "37",
        "--ntp",
        "123",
        "--local-stratum",
        "10",
    )
    with network_namespace() as namespace:
        launcher = ("ip", "netns", "exec", namespace)
        with server_process("80", *options, "--user", "nobody", launcher=launcher) as (
            process,
            port,
        ):
            assert port == 80
            lines = [readline_within(process.stdout) for _ in range(4)]
            assert lines[-1] == "Serving as user nobody, group nogroup.\n"
            status = status_of(process.pid)
            assert status["Uid"] == [str(nobody.pw_uid)] * 4
            assert status["Gid"] == [str(nobody.pw_gid)] * 4
            assert status["Groups"] == []
            timestamp(client_in(namespace, "127.0.0.1", "80").encode())
            for protocol, port_ in (("daytime", "13"), ("time", "37"), ("ntp", "123")):
                answer = client_in(
                    namespace, "--protocol", protocol, "127.0.0.1", port_
                )
                assert answer.strip()
            process.terminate()
            assert process.wait(TIMEOUT) == 0
            log = process.stderr.read()
    assert "serving as root" not in log, log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "options, problem",
    [
        (["--user", "no-such-user-here"], "no such user: 'no-such-user-here'"),
        (["--user", "root", "--group", "no-such-group"], "no such group"),
    ],
)
def test_an_unknown_account_is_one_line_before_anything_listens(options, problem):
    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX accounts")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "timeservice.server", str(port), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""  # no start-up line: nothing listened
    assert problem in one_line(result.stderr)


def test_root_drops_its_groups_then_its_group_then_itself(monkeypatch):
    calls = []
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(
            os, name, lambda value, name=name: calls.append((name, value))
        )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    privileges.become(privileges.Account("nobody", 65534, "nogroup", 65533))
    assert calls == [("setgroups", []), ("setgid", 65533), ("setuid", 65534)]
    calls.clear()
    monkeypatch.setattr(os, "geteuid", lambda: 65534)  # already that user
    privileges.become(privileges.Account("nobody", 65534, "nogroup", 65533))
    assert calls == [("setuid", 65534)]


def test_only_root_becomes_another_user(monkeypatch):
    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX accounts")
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    with pytest.raises(LookupError, match="only root can serve as another user"):
        privileges.find_account("root")


def test_group_goes_with_user(capsys):
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(["--group", "nogroup"])
    assert exit_info.value.code == 2
    assert "--group goes with --user" in capsys.readouterr().err


# systemd: socket activation and readiness


@contextlib.contextmanager
def notify_socket(directory: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(directory / "notify"))
        sock.settimeout(TIMEOUT)
        yield sock


def notices(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def wait_for_ntp(port: int) -> None:
    """Ask until the server answers: systemd-socket-activate binds in its own
    time. Unconnected, the socket hears no ICMP refusal; each try waits 0.2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(75):  # 15 s at most
            sock.sendto(ntp.request_packet(0), ("127.0.0.1", port))
            try:
                sock.recvfrom(512)
                return
            except TimeoutError:
                continue
    raise AssertionError("no NTP answer within 15 s")


@pytest.mark.slow
@needs_sigterm
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="needs systemd-socket-activate (Debian: systemd; scripts/test installs it "
    "as root)",
)
def test_systemd_passes_named_tcp_and_udp_sockets(tmp_path):
    line, daytime, time_, ntp_port = (free_port() for _ in range(4))
    at = "127.0.0.1:{}".format
    # It passes on no environment but its -E's; coverage's, if it measures.
    passed = [f"NOTIFY_SOCKET={tmp_path / 'notify'}"] + [
        f"{name}={os.environ[name]}"
        for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_RUN")
        if name in os.environ
    ]
    environment = [word for setting in passed for word in ("-E", setting)]
    # It listens on datagram or stream sockets, not both; it passes on the
    # sockets it got, so one runs the other, which runs the server.
    command = [
        *("systemd-socket-activate", "--datagram", "-l", at(ntp_port)),
        *("-l", at(daytime), "-l", at(time_), "--fdname=ntp:daytime:time"),
        *environment,
        *("systemd-socket-activate", "-l", at(line), "-l", at(daytime)),
        *("-l", at(time_), "--fdname=ntp:daytime:time:line:daytime:time"),
        *environment,
        *(sys.executable, "-m", "timeservice.server", "--local-stratum", "10"),
    ]
    with notify_socket(tmp_path) as notify:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_ntp(ntp_port)  # the first datagram starts the server
            sample = client.ask_ntp("127.0.0.1", ntp_port)
            assert abs(sample.offset) <= sample.error
            ready = notices(notify)
            assert ready["READY"] == "1"
            assert f"time on 127.0.0.1 port {line}" in ready["STATUS"]
            with client.TimeClient("127.0.0.1", line) as line_client:
                timestamp(line_client.get_time().encode() + b"\n")
            for udp in (False, True):
                text, _ = client.ask_daytime("127.0.0.1", daytime, udp=udp)
                assert text
                assert client.ask_time("127.0.0.1", time_, udp=udp).error < 1
            process.send_signal(signal.SIGTERM)  # the server: each program exec()s
            assert notices(notify)["STOPPING"] == "1"
            assert process.wait(TIMEOUT) == 0
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    assert f"Serving time on 127.0.0.1 port {line} (TCP, from systemd) ..." in out
    assert f"Serving NTP on 127.0.0.1 port {ntp_port} (UDP, from systemd) ..." in out
    assert f"Serving daytime on 127.0.0.1 port {daytime} (UDP, from systemd)" in out
    assert "Traceback" not in err


ACTIVATE = """
import os, socket, sys
kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
sockets = [
    open(os.devnull) if kind == "file"
    else socket.socket(socket.AF_UNIX) if kind == "unix"
    else socket.socket(type=kinds[kind])
    for kind in sys.argv[1].split(",")
]
for sock in sockets:
    if getattr(sock, "family", None) == socket.AF_INET:
        sock.bind(("127.0.0.1", 0))
        if sock.type == socket.SOCK_STREAM:
            sock.listen()
spare = [os.dup(sock.fileno()) for sock in sockets]  # above 3, 4, ...
for sock in sockets:
    sock.close()
for number, descriptor in enumerate(spare, 3):
    os.dup2(descriptor, number)
os.environ.update(LISTEN_FDS=str(len(sockets)), LISTEN_FDNAMES=sys.argv[2])
os.environ["LISTEN_PID"] = sys.argv[3] or str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "timeservice.server", *sys.argv[4:]])
"""


@pytest.mark.parametrize(
    "kinds, names, pid, problem",
    [
        ("tcp", "clock", "", "socket 3 is named 'clock'; the names are line, daytime"),
        ("tcp", "ntp", "", "socket 3 (ntp) must be a listening UDP socket"),
        ("tcp,udp", "line:line", "", "socket 4 (line) must be a listening TCP socket"),
        ("tcp", "line", "1", "LISTEN_PID=1 is another process"),
        ("tcp,tcp", "line", "", "names 1 socket(s), LISTEN_FDS=2"),
        ("tcp,file", "line:ntp", "", "descriptor 4 (ntp) is not a socket"),
        ("unix", "line", "", "socket 3 (line) is not an IPv4 or IPv6 socket"),
        ("tcp", "line", "x", "LISTEN_FDS='1' and LISTEN_PID='x' must be numbers"),
    ],
)
def test_sockets_that_do_not_fit_are_one_line(kinds, names, pid, problem):
    if not hasattr(os, "dup2") or sys.platform == "win32":
        pytest.skip("descriptors passed as systemd passes them (POSIX)")
    result = subprocess.run(
        [sys.executable, "-c", ACTIVATE, kinds, names, pid],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert problem in one_line(result.stderr)


def test_passed_sockets_are_served_as_their_names_say(serving):
    """In-process, the way main() serves them, with the descriptors elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LISTEN_FDS", "4")  # --local-stratum needs no --ntp then
        arguments = server_options.parse_arguments(
            "test", ["--local-stratum", "10", "--utc"]
        )
    kinds = [("line", socket.SOCK_STREAM), ("time", socket.SOCK_STREAM)]
    kinds += [("time", socket.SOCK_DGRAM), ("ntp", socket.SOCK_DGRAM)]
    sockets = []
    for _, kind in kinds:
        sock = socket.socket(type=kind)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        sockets.append(sock)
    first = 1000  # where no descriptor is open
    for number, sock in enumerate(sockets, first):
        os.dup2(sock.fileno(), number)
        sock.close()
    environ = {
        "LISTEN_FDS": str(len(kinds)),
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDNAMES": ":".join(name for name, _ in kinds),
        "OTHER": "kept",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(systemd, "FIRST_DESCRIPTOR", first)
        inherited = systemd.inherited_sockets(environ)
    assert environ == {"OTHER": "kept"}  # no child takes the sockets for its own
    settings = opening.Settings.from_arguments(arguments)
    opened = opening.open_inherited(inherited, settings)
    assert [(name, how) for name, how, _ in opened] == [
        ("time", " (TCP, from systemd)"),
        ("time (RFC 868)", " (TCP, from systemd)"),
        ("time (RFC 868)", " (UDP, from systemd)"),
        ("NTP", " (UDP, from systemd)"),
    ]
    line, time_tcp, time_udp, ntp_server = (servers[0] for _, _, servers in opened)
    for server in (line, time_tcp, time_udp, ntp_server):
        serving(server)
    with client.TimeClient("127.0.0.1", line.server_address[1]) as line_client:
        assert line_client.get_time().endswith("+00:00")  # --utc reached it
    for udp, server in ((False, time_tcp), (True, time_udp)):
        assert client.ask_time("127.0.0.1", server.server_address[1], udp=udp).error < 1
    assert abs(client.ask_ntp("127.0.0.1", ntp_server.server_address[1]).offset) < 1


def test_the_notices_reach_the_service_manager(tmp_path, caplog):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("Unix sockets")
    with notify_socket(tmp_path) as manager:
        notifier = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        notifier.notify("READY=1", "STATUS=Serving")
        assert notices(manager) == {"READY": "1", "STATUS": "Serving"}
    notifier.notify("STOPPING=1")  # the manager is gone: one warning
    notifier.close()
    assert "cannot notify the service manager" in caplog.text
    nowhere = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nowhere")})
    assert nowhere.sock is None
    assert "cannot reach NOTIFY_SOCKET" in caplog.text
    nowhere.notify("READY=1")  # does nothing
    nowhere.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets")
def test_an_abstract_notify_socket_is_reached(tmp_path):
    name = f"timeservice-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(TIMEOUT)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.notify("READY=1")
        notifier.close()
        assert notices(manager) == {"READY": "1"}


@pytest.mark.parametrize(
    "usec, pid, seconds",
    [
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("500000", "1", None),  # another process's
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_the_watchdog_timeout_systemd_sets(usec, pid, seconds):
    environ = {"WATCHDOG_USEC": usec, "WATCHDOG_PID": pid}
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    environ = {name: value for name, value in environ.items() if value is not None}
    assert systemd.watchdog_seconds(environ) == seconds
    assert environ == {}  # taken out, for no child to take


def test_binding_options_do_not_go_with_passed_sockets(monkeypatch, capsys):
    monkeypatch.setenv("LISTEN_FDS", "1")
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(["--ntp", "123"])
    assert exit_info.value.code == 2
    assert "the sockets come from systemd" in capsys.readouterr().err


UNITS = ROOT / "scripts" / "systemd"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="needs systemd-analyze (Debian: systemd; scripts/test installs it as root)",
)
def test_the_unit_files_verify(tmp_path):
    units = sorted(UNITS.glob("timeservice*"))
    assert {unit.suffix for unit in units} == {".socket", ".service"}
    # The service names the installed command; verify checks it exists.
    command = Path(sys.executable).with_name("timeservice-server")
    if not command.exists():
        pytest.skip(f"{command} is not installed (pip install .)")
    for unit in units:
        text = unit.read_text().replace(
            "/usr/local/bin/timeservice-server", str(command)
        )
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    service_text = (UNITS / "timeservice.service").read_text()
    for setting in (
        "Type=notify",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{setting}" in service_text
    names = {
        re.search(r"FileDescriptorName=(\w+)", unit.read_text())[1]
        for unit in units
        if unit.suffix == ".socket"
    }
    assert names == set(opening.ACTIVATED)
