"""The clock offset: Cristian's arithmetic by hand, then against real servers."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import server_process

from timeservice.client import TimeClient
from timeservice.clients.offset import Estimate, Sample, estimate, verdict
from timeservice.clients.standard import local_timestamp
from timeservice.clock.system import local_now, timestamp_ns
from timeservice.programs import client as client_program
from timeservice.programs.client import offset_json, offset_line
from timeservice.wire.line import parse_timestamp

S = 1_000_000_000  # nanoseconds in a second
SUMMARY = re.compile(
    r"offset [+-]\d+\.\d{6} s ± \d+\.\d{6} s, delay \d+\.\d{6} s "
    r"\(best of \d+; local clock [a-z ]+\)"
)


# The arithmetic


def test_offset_is_the_server_time_minus_the_midpoint():
    # Sent at 10 s, answered at 10.000150 s, the server said 12.500100 s:
    # the midpoint is 10.000075 s, so the server is 2.500025 s ahead.
    sample = Sample(t1=10 * S, ts=12_500_100_000, t4=10_000_150_000, delay=150_000)
    assert sample.offset == pytest.approx(2.500025, abs=1e-12)
    assert sample.error == pytest.approx(0.000075, abs=1e-12)


def test_a_server_behind_the_local_clock_gives_a_negative_offset():
    sample = Sample(t1=10 * S, ts=9 * S, t4=10_000_200_000, delay=200_000)
    assert sample.offset == pytest.approx(-1.000100, abs=1e-12)
    assert sample.error == pytest.approx(0.000100, abs=1e-12)


def test_the_estimate_keeps_the_sample_with_the_shortest_round_trip():
    slow = Sample(t1=0, ts=3 * S, t4=4_000_000, delay=4_000_000)
    fast = Sample(t1=10 * S, ts=13 * S, t4=10_000_100_000, delay=100_000)
    slower = Sample(t1=20 * S, ts=23 * S, t4=20_009_000_000, delay=9_000_000)
    result = estimate([slow, fast, slower])
    assert result.best is fast
    assert result.samples == (slow, fast, slower)
    assert result.offset == pytest.approx(2.999950, abs=1e-12)
    assert result.error == pytest.approx(0.000050, abs=1e-12)
    assert result.delay == pytest.approx(0.000100, abs=1e-12)


def test_no_samples_no_estimate():
    with pytest.raises(ValueError):
        estimate([])


@pytest.mark.parametrize(
    "offset, error, words",
    [
        (2.5, 0.001, "local clock is behind the server"),
        (-2.5, 0.001, "local clock is ahead of the server"),
        (0.00002, 0.0001, "local clock agrees with the server within the error bound"),
        (-0.0001, 0.0001, "local clock agrees with the server within the error bound"),
    ],
)
def test_the_verdict_says_the_sign_in_words(offset, error, words):
    assert verdict(offset, error) == words


def test_timestamp_ns_is_exact():
    assert timestamp_ns(datetime(1970, 1, 1, 0, 0, 1, 5, timezone.utc)) == 1_000_005_000
    plus_one = timezone(timedelta(hours=1))
    assert timestamp_ns(datetime(1970, 1, 1, 1, tzinfo=plus_one)) == 0
    moment = parse_timestamp("2026-11-27T10:15:42.123456+00:00")
    assert timestamp_ns(moment) == 1_795_774_542_123_456_000


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
        "samples": 2,
        "t1": "1970-01-01T05:30:10.000000+05:30",
        "ts": "12.5 s",
        "t4": "1970-01-01T05:30:10.000150+05:30",
    }


def test_local_timestamp_is_in_the_servers_form_and_local_time(india):
    text = local_timestamp(1_795_774_542_123_456_789)
    assert text == "2026-11-27T15:45:42.123456+05:30"


# Against servers whose clocks are off by a known amount


def shifted(shift: timedelta, stall=None):
    """A server clock `shift` ahead of this machine's, optionally slow to answer."""

    def clock():
        if stall is not None:
            stall()
        return local_now() + shift

    return clock


SHIFTS = [
    timedelta(hours=2),
    -timedelta(hours=2),
    timedelta(milliseconds=3),
    -timedelta(milliseconds=3),
]


@pytest.mark.parametrize("shift", SHIFTS, ids=str)
def test_the_estimate_holds_within_its_bound(start_server, shift):
    server = start_server(clock=shifted(shift))
    with TimeClient(*server.server_address[:2]) as time_client:
        result = time_client.measure_offset()
    assert len(result.samples) == 8
    assert abs(result.offset - shift.total_seconds()) <= result.error
    assert result.best.delay == min(sample.delay for sample in result.samples)


def test_an_unshifted_server_is_within_the_bound_of_zero(server):
    with TimeClient(*server.server_address[:2]) as time_client:
        result = time_client.measure_offset(4)
    assert abs(result.offset) <= result.error


def test_slow_answers_lose_to_the_fast_one(start_server):
    # The server is slow on purpose, as a congested path would make it:
    # every answer but the fourth waits 20 ms.
    calls = []
    congestion = threading.Event()  # never set: waiting on it is the delay

    def stall():
        calls.append(None)
        if len(calls) != 4:
            congestion.wait(0.02)

    shift = timedelta(minutes=5)
    server = start_server(clock=shifted(shift, stall))
    with TimeClient(*server.server_address[:2]) as time_client:
        result = time_client.measure_offset(6)
    assert result.best is result.samples[3]
    assert result.delay < 0.02
    assert all(
        sample.delay >= 0.02 * S for i, sample in enumerate(result.samples) if i != 3
    )
    assert abs(result.offset - shift.total_seconds()) <= result.error


# The command line


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
    assert figures["samples"] == 8
    assert abs(figures["offset"] - 90) <= figures["error"]
    assert figures["error"] == pytest.approx(figures["delay"] / 2, abs=1e-9)
    t1, ts, t4 = (parse_timestamp(figures[key]) for key in ("t1", "ts", "t4"))
    assert t1 <= t4
    assert t1 + shift - timedelta(seconds=1) <= ts <= t4 + shift + timedelta(seconds=1)


def test_client_json_needs_offset(server, capsys):
    host, port = server.server_address[:2]
    with pytest.raises(SystemExit) as exited:
        client_program.main([host, str(port), "--json"])
    assert exited.value.code == 2
    assert "--json goes with --offset" in capsys.readouterr().err


# Against a real process whose clock is shifted by faketime

needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None,
    reason="needs faketime (Debian package faketime; scripts/test installs it as root)",
)


@needs_faketime
@pytest.mark.parametrize("shift", [2.5, -2.5, 0.0])
def test_the_estimate_finds_faketimes_shift(capsys, shift):
    launcher = ("faketime", "-f", f"{shift:+}s") if shift else ()
    with server_process("0", "-q", launcher=launcher) as (_, port):
        assert client_program.main(["127.0.0.1", str(port), "--offset", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert abs(figures["offset"] - shift) <= figures["error"]
