"""RFC 868: the 1900 epoch, the 2036 wrap and the reply, worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from timeservice.wire import rfc868

WRAP = 2_085_978_496  # 2036-02-07T06:28:16Z, when the 32-bit count wraps

UTC = UTC


def test_the_1970_epoch_is_2208988800_seconds_after_1900():
    assert rfc868.encode(0) == bytes.fromhex("83aa7e80")
    assert rfc868.decode(bytes.fromhex("83aa7e80"), near=0) == 0


def test_the_count_wraps_in_2036_and_is_read_in_the_nearest_era():
    assert datetime.fromtimestamp(WRAP, UTC) == datetime(
        2036, 2, 7, 6, 28, 16, tzinfo=UTC
    )
    assert rfc868.encode(WRAP - 1) == b"\xff\xff\xff\xff"
    assert rfc868.encode(WRAP) == b"\x00\x00\x00\x00"
    assert rfc868.encode(WRAP + 1) == b"\x00\x00\x00\x01"
    for near in (WRAP - 100, WRAP + 100):  # a reader on either side of the wrap
        assert rfc868.decode(b"\xff\xff\xff\xff", near) == WRAP - 1
        assert rfc868.decode(b"\x00\x00\x00\x01", near) == WRAP + 1
    assert rfc868.decode(b"\x00\x00\x00\x01", near=-rfc868.EPOCH_1900) == (
        1 - rfc868.EPOCH_1900  # a reader in 1900
    )


def test_a_time_reply_is_four_bytes():
    with pytest.raises(ValueError):
        rfc868.decode(b"\x00\x01\x02", near=0)


def test_an_rfc_868_reply_is_read_from_its_first_four_bytes():
    # inetutils-inetd sends four zero bytes after the time; rdate reads four.
    assert rfc868.decode(rfc868.encode(1000) + bytes(4), near=1000) == 1000
    with pytest.raises(ValueError):
        rfc868.decode(bytes(3), near=0)
