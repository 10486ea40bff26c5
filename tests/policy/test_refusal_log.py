"""The refusal log: the first refusal logged, the rest counted."""

from __future__ import annotations

import logging

from timeservice.policy.logs import RefusalLog


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
