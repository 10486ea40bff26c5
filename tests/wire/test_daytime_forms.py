"""The Daytime forms the client reads, and those it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from timeservice.wire.daytime import parse_daytime

UTC = UTC


@pytest.mark.parametrize(
    "text, moment, resolution",
    [
        ("2026-11-27T10:15:42.117940+01:00\r\n", "2026-11-27T09:15:42.117940", 1e-6),
        ("2026-11-27T09:15:42Z", "2026-11-27T09:15:42", 1.0),
        ("2026-11-27 09:15:42.5+00:00", "2026-11-27T09:15:42.500000", 0.1),
        ("27 NOV 2026 09:15:42 UTC\r\n", "2026-11-27T09:15:42", 1.0),
    ],
)
def test_daytime_forms(text, moment, resolution):
    reading = parse_daytime(text)
    assert reading.moment == datetime.fromisoformat(moment).replace(tzinfo=UTC)
    assert reading.resolution == pytest.approx(resolution)


def test_the_ctime_form_is_local_time(monkeypatch):
    reading = parse_daytime("Fri Nov 27 09:15:42 2026\r\n")
    assert reading.moment == datetime(2026, 11, 27, 9, 15, 42).astimezone()
    assert reading.resolution == 1.0


@pytest.mark.parametrize(
    "text", ["hello", "27 NOV 2026 09:15:42 CET", "", "2026-11-27"]
)
def test_unknown_daytime_forms_are_refused(text):
    with pytest.raises(ValueError):
        parse_daytime(text)
