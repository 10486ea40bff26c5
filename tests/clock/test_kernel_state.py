"""The kernel's clock state: what adjtimex's answer says, and the call found
or not."""

from __future__ import annotations

import pytest

from timeservice.clock import kernel as kernelclock
from timeservice.wire import ntp


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
    ],
)
def test_the_kernel_state_read_from_adjtimex(result, status, expected):
    assert kernelclock.state_of(result, status, 250_000) == expected

    def adjtimex(timex: kernelclock.Timex) -> int:  # as the C library fills it
        timex.status, timex.maxerror = status, 250_000
        return result

    assert kernelclock.read(adjtimex) == expected


def test_a_failed_call_or_none_is_no_state():
    assert kernelclock.read(lambda timex: -1) is None
    assert kernelclock.read(None) is None


def test_this_machine_reads_its_own_kernel_state():
    if not kernelclock.AVAILABLE:
        assert kernelclock.read() is None
        return
    state = kernelclock.read()
    assert state is not None and state.max_error >= 0
    assert state.leap in (ntp.LEAP_NONE, ntp.LEAP_INSERT, ntp.LEAP_DELETE)


def test_no_call_where_there_is_none(monkeypatch):
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", True)
    assert kernelclock.find_call() is None
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", False)

    def no_library(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(kernelclock.ctypes, "CDLL", no_library)
    assert kernelclock.find_call() is None
    monkeypatch.setattr(kernelclock.ctypes, "CDLL", lambda *a, **k: object())
    assert kernelclock.find_call() is None
