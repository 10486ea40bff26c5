"""Probing as an exporter probes: one sample, within the scrape's time, a
Kiss-o'-Death obeyed across scrapes, a bound on probes at once."""

from __future__ import annotations

import threading

import pytest
from conftest import TIMEOUT, reply_to, udp_socket

from timeservice.clients.probing import BACK_OFF, MOST_BACK_OFF, Prober
from timeservice.clients.selection import Failure, Reading
from timeservice.clients.targets import Asking, parse_target
from timeservice.server import NtpHandler, NtpServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_ntp():
    """An NTP server of the test's own that answers each request with what
    `answer(request)` makes (None: silence), and counts them."""
    sock = udp_socket()
    state = {"count": 0, "answer": lambda request: None, "heard": threading.Event()}
    stop = threading.Event()

    def run() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                request, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            state["count"] += 1
            state["heard"].set()
            reply = state["answer"](request)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield sock.getsockname()[1], state
    finally:
        stop.set()
        thread.join(TIMEOUT)
        sock.close()


def test_a_probe_asks_once_and_says_what_the_server_said(serve):
    server = serve(NtpServer, NtpHandler, local_stratum=10, upstream=None)
    prober = Prober(Asking(samples=8))  # one sample, whatever asking said
    found = prober.probe(parse_target(f"ntp://127.0.0.1:{server.server_address[1]}"), 5)
    assert isinstance(found.result, Reading)
    assert abs(found.result.offset) < found.result.bound + 0.01
    assert found.stratum == 10 and 0 < found.root_distance < 1
    assert server.answered == 1
    assert 0 < found.seconds < 5 and found.success
    assert prober.probes == {("ntp", True): 1}


def test_a_kiss_of_death_leaves_the_target_alone_and_longer_each_time(fake_ntp):
    port, state = fake_ntp
    state["answer"] = lambda request: reply_to(request, stratum=0, reference_id=b"RATE")
    clock = Clock()
    prober = Prober(Asking(timeout=2), clock=clock)
    target = parse_target(f"ntp://127.0.0.1:{port}")
    first = prober.probe(target, 5)
    assert isinstance(first.result, Failure) and "Kiss-o'-Death" in first.result.reason
    assert state["count"] == 1
    clock.now += BACK_OFF - 1  # scraped again within the back-off: not asked
    again = prober.probe(target, 5)
    assert "backing off" in again.result.reason
    assert state["count"] == 1
    clock.now += 2  # past it: asked, kissed again, and left alone twice as long
    prober.probe(target, 5)
    assert state["count"] == 2
    clock.now += 2 * BACK_OFF - 1
    prober.probe(target, 5)
    assert state["count"] == 2
    for _ in range(8):  # never longer than the longest poll
        clock.now += MOST_BACK_OFF + 1
        prober.probe(target, 5)
    clock.now += MOST_BACK_OFF + 1
    prober.probe(target, 5)
    assert state["count"] == 11
    # An answer ends the back-off.
    state["answer"] = lambda request: reply_to(request)
    clock.now += MOST_BACK_OFF + 1
    assert prober.probe(target, 5).success
    clock.now += 1
    assert prober.probe(target, 5).success
    assert state["count"] == 13


def test_a_probe_keeps_within_the_time_it_is_given(fake_ntp):
    port, _ = fake_ntp  # silent
    prober = Prober(Asking(timeout=5))
    found = prober.probe(parse_target(f"ntp://127.0.0.1:{port}"), 0.3)
    assert found.result.verdict == "unreachable"
    assert found.seconds < 1.0


def test_probes_at_once_are_bounded(fake_ntp):
    port, state = fake_ntp  # silent: the first probe holds the one slot
    prober = Prober(Asking(timeout=5), most=1)
    target = parse_target(f"ntp://127.0.0.1:{port}")
    first = threading.Thread(target=prober.probe, args=(target, 2.0))
    first.start()
    try:
        assert state["heard"].wait(TIMEOUT)
        found = prober.probe(target, 0.2)
    finally:
        first.join(TIMEOUT)
    assert found.result.reason == "too many probes at once"
    assert state["count"] == 1
