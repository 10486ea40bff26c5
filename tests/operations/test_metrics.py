"""Metrics: the text format by hand, then on the wire as the traffic moves
them, and the bounded endpoint."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import urllib.error
import urllib.request

import pytest
from conftest import (
    TIMEOUT,
    datagram_from,
    needs_sigterm,
    on_linux,
    read_all,
    readline_within,
    server_process,
)

from timeservice import client
from timeservice.operations.metrics import collect, render
from timeservice.policy.access import AccessList
from timeservice.programs import server as server_program
from timeservice.programs.options import metrics_address
from timeservice.server import TimeServer


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


@on_linux
def test_one_address_holding_connections_leaves_scrapes_from_others(serving):
    metrics = metrics_server(serving)
    port = metrics.server_address[1]
    holding = [connect_from_address(port, "127.0.0.1") for _ in range(64)]
    try:
        for sock in holding:  # half a request each, and then nothing
            with contextlib.suppress(OSError):  # refused ones may be closed
                sock.sendall(b"GET /metrics HTTP/1.0\r\n")
        answered = [
            http_get(port, source="127.0.0.2").startswith(b"HTTP/1.0 200 ")
            for _ in range(5)
        ]
    finally:
        for sock in holding:
            sock.close()
    assert answered == [True] * 5  # 2.0.0: 0 of 5
    assert metrics.refused["per_host"] == 64 - 4


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
