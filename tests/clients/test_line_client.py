"""The line client without `with`, and after an error."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import TIMEOUT, moments

from timeservice.client import TimeClient
from timeservice.wire.errors import ReplyError


def test_after_a_timeout_the_client_does_not_read_the_late_answer(start_server):
    released = threading.Event()
    old = datetime(2000, 1, 1, tzinfo=UTC)

    def clock():
        if not released.is_set():
            released.wait(TIMEOUT)
            return old  # the late answer to the request that timed out
        return datetime.now(UTC)

    server = start_server(clock=moments(clock))
    time_client = TimeClient(*server.server_address[:2], timeout=0.2)
    with time_client:
        with pytest.raises(TimeoutError):
            time_client.get_time()
        released.set()
        # The next question opens a fresh connection: no late answer on it.
        assert time_client.get_time() > old


def test_after_an_err_reply_the_client_must_connect_again(start_server):
    failing = threading.Event()
    failing.set()

    def clock():
        if failing.is_set():
            raise OSError("no clock")
        return datetime.now(UTC)

    server = start_server(clock=moments(clock))
    with TimeClient(*server.server_address[:2]) as time_client:
        with pytest.raises(ReplyError, match="clock unavailable"):
            time_client.measure_offset(3)
        failing.clear()  # the next question connects afresh
        assert abs(time_client.get_time() - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_client_used_without_with_connects_on_its_first_question(server):
    time_client = TimeClient(*server.server_address[:2])
    try:
        first = time_client.get_time()
        assert abs(first - datetime.now(UTC)) < timedelta(seconds=5)
        assert time_client.get_time() >= first  # asked again
    finally:
        time_client.close()
    time_client.close()  # closing twice is harmless
