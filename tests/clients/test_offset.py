"""The offset arithmetic by hand, then against servers whose clocks are off
by a known amount."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import faketime, port_of, server_process, shifted

from timeservice import client
from timeservice.client import TimeClient
from timeservice.clients import standard
from timeservice.clients.offset import Sample, estimate, verdict
from timeservice.programs import client as client_program
from timeservice.server import OneShotServer, TimeHandler
from timeservice.wire.line import parse_timestamp, timestamp_ns

S = 1_000_000_000  # nanoseconds in a second


# The arithmetic


def test_offset_is_the_server_time_minus_the_midpoint():
    # Sent at 10 s, answered at 10.000150 s, the server said 12.500100 s:
    # the midpoint is 10.000075 s, so the server is 2.500025 s ahead.
    sample = Sample(
        t1_ns=10 * S, ts_ns=12_500_100_000, t4_ns=10_000_150_000, elapsed_ns=150_000
    )
    assert sample.offset == pytest.approx(2.500025, abs=1e-12)
    assert sample.error == pytest.approx(0.000075, abs=1e-12)


def test_a_server_behind_the_local_clock_gives_a_negative_offset():
    sample = Sample(t1_ns=10 * S, ts_ns=9 * S, t4_ns=10_000_200_000, elapsed_ns=200_000)
    assert sample.offset == pytest.approx(-1.000100, abs=1e-12)
    assert sample.error == pytest.approx(0.000100, abs=1e-12)


def test_the_estimate_keeps_the_sample_with_the_shortest_round_trip():
    slow = Sample(t1_ns=0, ts_ns=3 * S, t4_ns=4_000_000, elapsed_ns=4_000_000)
    fast = Sample(t1_ns=10 * S, ts_ns=13 * S, t4_ns=10_000_100_000, elapsed_ns=100_000)
    slower = Sample(
        t1_ns=20 * S, ts_ns=23 * S, t4_ns=20_009_000_000, elapsed_ns=9_000_000
    )
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
    assert timestamp_ns(datetime(1970, 1, 1, 0, 0, 1, 5, UTC)) == 1_000_005_000
    plus_one = timezone(timedelta(hours=1))
    assert timestamp_ns(datetime(1970, 1, 1, 1, tzinfo=plus_one)) == 0
    moment = parse_timestamp("2026-11-27T10:15:42.123456+00:00")
    assert timestamp_ns(moment) == 1_795_774_542_123_456_000


# The client's arithmetic for the standard protocols


def test_ntp_offset_and_bound_by_hand():
    # Sent at 10 s, received by the server at 12.5001 s by its clock, answered
    # 0.0001 s later, back at 10.0003 s: offset ((2.5001) + (2.4999)) / 2.
    sample = Sample(
        t1_ns=10 * S,
        ts_ns=12_500_100_000,
        t4_ns=10_000_300_000,
        elapsed_ns=300_000,
        t3_ns=12_500_200_000,
        root_distance=0.001,
    )
    assert sample.offset == pytest.approx(2.5, abs=1e-12)
    assert sample.delay_ns == 200_000
    assert sample.error == pytest.approx(0.0001 + 0.001, abs=1e-12)


def test_a_whole_second_reading_widens_the_bound_by_that_second():
    # The server said 12 s: it read its clock somewhere in [12 s, 13 s).
    sample = Sample(
        t1_ns=10 * S,
        ts_ns=12 * S,
        t4_ns=10_000_200_000,
        elapsed_ns=200_000,
        resolution_ns=S,
    )
    assert sample.offset == pytest.approx(2.4999, abs=1e-12)
    assert sample.error == pytest.approx(0.5001, abs=1e-12)


def test_a_whole_second_from_a_clock_that_moves_once_a_tick_is_in_the_bound(serve):
    # glibc's time() on Linux (xinetd's Daytime and Time) moves once a tick:
    # 1.7 ms into second 10 it may still say 9. One machine: offset 0.
    t1 = 10 * S + 1_700_000
    exact = Sample(
        t1_ns=t1, ts_ns=9 * S, t4_ns=t1 + 150_000, elapsed_ns=150_000, resolution_ns=S
    )
    assert abs(exact.offset) > exact.error  # the second alone misses it
    widened = dataclasses.replace(exact, resolution_ns=S + standard.COARSE_CLOCK)
    assert abs(widened.offset) <= widened.error
    # The client allows the tick for every reading in whole seconds.
    tcp = serve(OneShotServer, TimeHandler)
    assert (
        client.ask_time("127.0.0.1", port_of(tcp)).resolution_ns
        == widened.resolution_ns
    )


# Against servers whose clocks are off by a known amount


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
        sample.delay >= 0.02 for i, sample in enumerate(result.samples) if i != 3
    )
    assert abs(result.offset - shift.total_seconds()) <= result.error


# Against a real process whose clock is shifted by faketime

needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None,
    reason="needs faketime (Debian package faketime; scripts/test installs it as root)",
)


@needs_faketime
@pytest.mark.parametrize("shift", [2.5, -2.5, 0.0])
def test_the_estimate_finds_faketimes_shift(capsys, shift):
    launcher = faketime(f"{shift:+}s") if shift else ()  # not the wrapper: see it
    with server_process("0", "-q", launcher=launcher) as (_, port):
        assert client_program.main(["127.0.0.1", str(port), "--offset", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert abs(figures["offset"] - shift) <= figures["error"]
