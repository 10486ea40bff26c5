"""systemd's variables given anything at all."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from timeservice.operations import systemd

numbers = st.one_of(st.integers(0, 10**6).map(str), st.text(max_size=8))


@given(numbers, numbers, st.text(max_size=30))
def test_any_activation_variables_are_sockets_or_one_activation_error(
    count, pid, names
):
    if pid.strip() == str(os.getpid()):
        pid = "1"  # never this process's: it would take the test's descriptors
    environ = {"LISTEN_FDS": count, "LISTEN_PID": pid, "LISTEN_FDNAMES": names}
    try:
        systemd.inherited_sockets(environ)
    except systemd.ActivationError:
        pass
    assert "LISTEN_FDS" not in environ  # taken out, whatever they said


@given(numbers, st.one_of(st.none(), numbers))
def test_any_watchdog_variables_are_a_timeout_or_none(usec, pid):
    environ = {"WATCHDOG_USEC": usec}
    if pid is not None:
        environ["WATCHDOG_PID"] = pid
    seconds = systemd.watchdog_seconds(environ)
    assert seconds is None or seconds > 0
    assert environ == {}
