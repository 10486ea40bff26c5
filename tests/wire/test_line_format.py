"""The line protocol's format: timestamps, requests, replies and ERR lines."""

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from timeservice.wire.errors import ReplyError
from timeservice.wire.line import (
    COMMAND,
    RequestError,
    error_line,
    format_timestamp,
    parse_reply,
    parse_request,
    parse_timestamp,
    strip_line_ending,
)

CET = timezone(timedelta(hours=1))

NEWFOUNDLAND = timezone(-timedelta(hours=3, minutes=30))


@pytest.mark.parametrize(
    "moment, text",
    [
        (
            datetime(2026, 11, 27, 10, 15, 42, 0, CET),
            "2026-11-27T10:15:42.000000+01:00",
        ),
        (
            datetime(2026, 11, 27, 10, 15, 42, 7, CET),
            "2026-11-27T10:15:42.000007+01:00",
        ),
        (
            datetime(2026, 1, 2, 3, 4, 5, 999999, NEWFOUNDLAND),
            "2026-01-02T03:04:05.999999-03:30",
        ),
        (
            datetime(2026, 6, 1, 0, 0, 0, 123456, UTC),
            "2026-06-01T00:00:00.123456+00:00",
        ),
    ],
)
def test_format_timestamp_has_six_digits_and_the_offset(moment, text):
    assert format_timestamp(moment) == text
    assert parse_timestamp(text) == moment


def test_format_timestamp_refuses_a_naive_time():
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 11, 27, 10, 15, 42))


def test_parse_timestamp_accepts_z_for_utc():
    assert parse_timestamp("2026-11-27T10:15:42.000000Z") == datetime(
        2026, 11, 27, 10, 15, 42, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T10:15:42+01:00",  # no fraction
        "2026-11-27T10:15:42.000+01:00",  # three digits
        "2026-11-27T10:15:42.000000",  # no offset
        "2026-11-27 10:15:42.000000+01:00",  # space, not T
        "2026-13-27T10:15:42.000000+01:00",  # no 13th month
        " 2026-11-27T10:15:42.000000+01:00",
        "\u0662026-11-27T10:15:42.000000+01:00",  # an Arabic-Indic digit
        "",
    ],
)
def test_parse_timestamp_rejects_other_shapes(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    "line, stripped",
    [
        (b"send time\n", b"send time"),
        (b"send time\r\n", b"send time"),
        (b"send time", b"send time"),
        (b"send time\r", b"send time\r"),  # a lone CR is not a line ending
        (b"send time\r\r\n", b"send time\r"),
        (b"\n", b""),
    ],
)
def test_strip_line_ending(line, stripped):
    assert strip_line_ending(line) == stripped


@pytest.mark.parametrize(
    "request_",
    [b"send time", b"SEND TIME", b"Send Time", b"  send \t  time\t ", b"sEnD\t\ttImE"],
)
def test_parse_request_accepts_send_time_in_any_case_and_spacing(request_):
    assert parse_request(request_) == COMMAND


@pytest.mark.parametrize(
    "request_, reason",
    [
        (b"", "empty request"),
        (b" \t ", "empty request"),
        (b"send", "unknown request"),
        (b"time", "unknown request"),
        (b"send time now", "unknown request"),
        (b"sendtime", "unknown request"),
        (b"send  time please", "unknown request"),
        (b"\xff\xfesend time", "not UTF-8"),
        (b"send \xc3 time", "not UTF-8"),
        (b"send\x00time", "control character"),
        (b"send time\r", "control character"),
        (b"send\x1b[2Jtime", "control character"),
        (b"send\x7ftime", "control character"),
        ("send\u0085time".encode(), "control character"),
    ],
)
def test_parse_request_names_the_problem_and_the_valid_command(request_, reason):
    with pytest.raises(RequestError) as caught:
        parse_request(request_)
    assert reason in str(caught.value)
    assert "'send time'" in str(caught.value)


def test_error_line():
    assert error_line("busy") == b"ERR busy\n"


@pytest.mark.parametrize(
    "line",
    [
        b"2026-11-27T10:15:42.000000+01:00\n",
        b"2026-11-27T10:15:42.000000+01:00\r\n",
        b"2026-11-27T10:15:42.000000+01:00",
    ],
)
def test_parse_reply_returns_the_timestamp(line):
    assert parse_reply(line) == "2026-11-27T10:15:42.000000+01:00"


@pytest.mark.parametrize(
    "line, message",
    [
        (b"ERR busy\n", "server answered 'busy'"),
        (b"hello\n", "invalid reply b'hello\\n'"),
        (b"\xff\n", "invalid reply"),
        (b"", "invalid reply"),
    ],
)
def test_parse_reply_raises_for_errors_and_garbage(line, message):
    with pytest.raises(ReplyError, match=re.escape(message)):
        parse_reply(line)
