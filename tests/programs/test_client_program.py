"""The client's command line: what it prints and the one line for each mistake."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta

import pytest
from conftest import (
    TIMEOUT,
    one_line,
    oneshot_server,
    port_of,
    reply_to,
    shifted,
    udp_socket,
)

from timeservice.clients import sampling
from timeservice.clients.offset import Estimate, Sample
from timeservice.clients.standard import local_timestamp
from timeservice.clock.kernel import KernelState
from timeservice.policy.sources import SourceLimits
from timeservice.programs import client as client_program
from timeservice.programs.client import offset_json, offset_line
from timeservice.server import NtpHandler, NtpServer
from timeservice.wire import ntp
from timeservice.wire.line import parse_timestamp

S = 1_000_000_000  # nanoseconds in a second

SUMMARY = re.compile(
    r"offset [+-]\d+\.\d{6} s ± \d+\.\d{6} s, delay \d+\.\d{6} s "
    r"\(best of \d+; local clock [a-z ]+\)"
)


# The standard protocols


def test_the_client_rejects_udp_for_the_line_protocol(capsys):
    with pytest.raises(SystemExit) as exited:
        client_program.main(["--udp"])
    assert exited.value.code == 2
    assert "--udp goes with --protocol daytime or time" in capsys.readouterr().err


def test_the_client_prints_an_unknown_daytime_form_as_it_came(capsys):
    with oneshot_server(b"Tuesday, the 27th\r\n") as port:
        assert (
            client_program.main(["--protocol", "daytime", "127.0.0.1", str(port)]) == 0
        )
    assert capsys.readouterr().out == "Tuesday, the 27th\n"
    with oneshot_server(b"Tuesday, the 27th\r\n") as port:
        assert (
            client_program.main(
                ["--protocol", "daytime", "127.0.0.1", str(port), "--offset"]
            )
            == 1
        )
    assert "cannot read the daytime form 'Tuesday, the 27th'" in one_line(
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_ntp_requests_are_paced_as_servers_expect():
    arrived: list[float] = []
    with udp_socket() as fake:

        def answer() -> None:
            for _ in range(3):
                request, peer = fake.recvfrom(512)
                arrived.append(time.monotonic())
                fake.sendto(reply_to(request, receive=1 << 32, transmit=1 << 32), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        port = str(fake.getsockname()[1])
        argv = ["--protocol", "ntp", "--offset", "-n", "3", "127.0.0.1", port]
        assert client_program.main(argv) == 0
        thread.join(TIMEOUT)
    gaps = [b - a for a, b in zip(arrived[:-1], arrived[1:], strict=True)]
    assert len(gaps) == 2 and min(gaps) >= sampling.NTP_SPACING * 0.95


def test_a_burst_stops_at_a_kiss_and_keeps_what_it_has(serve, capsys):
    # 16 at once, then a kiss: nothing leaks past the limit.
    server = serve(
        NtpServer, NtpHandler, local_stratum=10, limits=SourceLimits(leak=0, kiss=True)
    )
    argv = ["--protocol", "ntp", "--offset", "-n", "20", "--burst", "--json"]
    assert client_program.main([*argv, "127.0.0.1", str(port_of(server))]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["samples"]) == 16
    assert "stopped asking: " in one_line(captured.err)
    assert "Kiss-o'-Death, code 'RATE'" in captured.err


def test_the_client_names_a_kiss_of_death_in_one_line(serve, capsys):
    policy = SourceLimits(burst=1, rate=0.0, leak=0.0, kiss=True)
    server = serve(NtpServer, NtpHandler, local_stratum=10, limits=policy)
    port = str(port_of(server))
    assert client_program.main(["--protocol", "ntp", "127.0.0.1", port]) == 0
    capsys.readouterr()
    assert client_program.main(["--protocol", "ntp", "127.0.0.1", port]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"127.0.0.1 port {port}: server sent a Kiss-o'-Death, code 'RATE'" in err


def test_the_client_says_a_server_is_unsynchronised(serve, capsys):
    unsynchronised = KernelState(False, ntp.LEAP_NONE, 16.0)
    server = serve(NtpServer, NtpHandler, kernel_state=lambda: unsynchronised)
    assert (
        client_program.main(["--protocol", "ntp", "127.0.0.1", str(port_of(server))])
        == 1
    )
    assert (
        "server says its clock is not synchronised (leap indicator 3, stratum 0, "
        "reference ID 'INIT')" in one_line(capsys.readouterr().err)
    )


def test_the_client_times_out_on_a_silent_udp_port(capsys):
    with udp_socket() as silent:
        port = str(silent.getsockname()[1])
        assert (
            client_program.main(
                ["--protocol", "time", "--udp", "127.0.0.1", port, "--timeout", "0.2"]
            )
            == 1
        )
    assert f"no answer from 127.0.0.1 port {port} within 0.2 s" in one_line(
        capsys.readouterr().err
    )


# How the client shows it

HAND_MADE = Estimate(
    best=Sample(10 * S, 12_500_100_000, 10_000_150_000, 150_000, "12.5 s"),
    samples=(
        Sample(0, 2 * S, 900_000, 900_000, "2 s"),
        Sample(10 * S, 12_500_100_000, 10_000_150_000, 150_000, "12.5 s"),
    ),
)


def test_the_offset_line():
    assert offset_line(HAND_MADE) == (
        "offset +2.500025 s ± 0.000075 s, delay 0.000150 s "
        "(best of 2; local clock is behind the server)"
    )


@pytest.fixture
def india(monkeypatch):
    """Local time is India's (UTC+05:30, no daylight saving) for one test."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_offset_json(india):
    figures = json.loads(offset_json(HAND_MADE, "host port 1"))
    assert figures == {
        "server": "host port 1",
        "offset": 2.500025,
        "error": 0.000075,
        "delay": 0.00015,
        "samples": [  # each measurement, in the order taken
            {"offset": 1.99955, "error": 0.00045, "delay": 0.0009},
            {"offset": 2.500025, "error": 0.000075, "delay": 0.00015},
        ],
        "t1": "1970-01-01T05:30:10.000000+05:30",
        "ts": "12.5 s",
        "t4": "1970-01-01T05:30:10.000150+05:30",
    }


def test_local_timestamp_is_in_the_servers_form_and_local_time(india):
    text = local_timestamp(1_795_774_542_123_456_789)
    assert text == "2026-11-27T15:45:42.123456+05:30"


# --offset on the command line


@pytest.mark.parametrize(
    "shift, words",
    [
        (timedelta(hours=2), "local clock is behind the server"),
        (-timedelta(hours=2), "local clock is ahead of the server"),
    ],
)
def test_client_offset_prints_the_answers_then_the_estimate(
    start_server, capsys, shift, words
):
    server = start_server(clock=shifted(shift))
    host, port = server.server_address[:2]
    assert client_program.main([host, str(port), "--offset", "-n", "3"]) == 0
    *answers, summary = capsys.readouterr().out.splitlines()
    assert len(answers) == 3
    for answer in answers:
        parse_timestamp(answer)
    assert SUMMARY.fullmatch(summary), summary
    assert summary.endswith(f"(best of 3; {words})")
    offset = float(summary.split()[1])
    assert offset == pytest.approx(shift.total_seconds(), abs=0.01)


def test_client_offset_json_is_one_line(start_server, capsys):
    shift = timedelta(seconds=90)
    server = start_server(clock=shifted(shift))
    host, port = server.server_address[:2]
    assert client_program.main([host, str(port), "--offset", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    figures = json.loads(out)
    assert figures["server"] == f"{host} port {port}"
    assert len(figures["samples"]) == 8
    assert abs(figures["offset"] - 90) <= figures["error"]
    assert figures["error"] == pytest.approx(figures["delay"] / 2, abs=1e-9)
    t1, ts, t4 = (parse_timestamp(figures[key]) for key in ("t1", "ts", "t4"))
    assert t1 <= t4
    assert t1 + shift - timedelta(seconds=1) <= ts <= t4 + shift + timedelta(seconds=1)


def test_a_precision_of_2_to_the_127_is_not_believed(capsys):
    with udp_socket() as fake:

        def answer() -> None:
            request, peer = fake.recvfrom(512)
            fields = {"receive": 1 << 32, "transmit": 1 << 32, "precision": 127}
            fake.sendto(reply_to(request, **fields), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        port = str(fake.getsockname()[1])
        argv = ["--protocol", "ntp", "--offset", "-n", "1", "127.0.0.1", port]
        assert client_program.main(argv) == 1  # 2.0.0: ± 1.7e38 s, "agrees"
        thread.join(TIMEOUT)
    err = one_line(capsys.readouterr().err)
    assert "root distance 1.7e+38 s is more than 1 s" in err
