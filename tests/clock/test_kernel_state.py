"""The kernel's clock state, with the call faked."""

from __future__ import annotations

import pytest

from timeservice.clock import kernel as kernelclock
from timeservice.wire import ntp


def fake_adjtimex(result: int, status: int, maxerror: int = 250_000):
    def call(timex):
        timex._obj.status, timex._obj.maxerror = status, maxerror
        return result

    return call


@pytest.mark.parametrize(
    "result, status, expected",
    [
        (0, 0, kernelclock.KernelState(True, ntp.LEAP_NONE, 0.25)),
        (1, kernelclock.STA_INS, kernelclock.KernelState(True, ntp.LEAP_INSERT, 0.25)),
        (2, kernelclock.STA_DEL, kernelclock.KernelState(True, ntp.LEAP_DELETE, 0.25)),
        (
            0,
            kernelclock.STA_UNSYNC,
            kernelclock.KernelState(False, ntp.LEAP_NONE, 0.25),
        ),
        (
            kernelclock.TIME_ERROR,
            0,
            kernelclock.KernelState(False, ntp.LEAP_NONE, 0.25),
        ),
        (-1, 0, None),
    ],
)
def test_the_kernel_state_read_from_adjtimex(monkeypatch, result, status, expected):
    monkeypatch.setattr(kernelclock, "_call", fake_adjtimex(result, status))
    assert kernelclock.read() == expected


def test_no_kernel_state_where_there_is_no_call(monkeypatch):
    monkeypatch.setattr(kernelclock, "_call", None)
    assert kernelclock.read() is None
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", True)
    assert kernelclock._find_call() is None
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", False)

    def no_library(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(kernelclock.ctypes, "CDLL", no_library)
    assert kernelclock._find_call() is None
    monkeypatch.setattr(kernelclock.ctypes, "CDLL", lambda *a, **k: object())
    assert kernelclock._find_call() is None
