"""What the platform offers, and the portable paths chosen without it."""

from __future__ import annotations

import types

from conftest import TIMEOUT, needs_sigterm, run_python, server_process

from timeservice.host import capabilities


def test_the_portable_switch_turns_every_capability_off():
    code = (
        "from timeservice.host import capabilities as c;"
        "import timeservice.server as s;"
        "print(c.SOCKETS_ARE_FILES, c.CPU_AFFINITY, c.open_file_limit(),"
        " s.TimeRequestHandler.fd_reader)"
    )
    result = run_python(code, TIMESERVICE_PORTABLE="1")
    assert result.stdout == "False False None False\n", result.stderr


@needs_sigterm
def test_the_verbose_log_says_which_paths_were_chosen():
    with server_process("0", "-v") as (process, _):
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert f"platform: {capabilities.describe()}" in log


def test_capabilities_say_no_when_the_platform_does(monkeypatch):
    def fail(*args):
        raise OSError("not here")

    monkeypatch.setattr(capabilities, "os", types.SimpleNamespace(fstat=fail))
    assert capabilities.sockets_are_files() is False
    monkeypatch.setattr(capabilities, "open", fail, raising=False)
    assert capabilities.current_cpu() is None
