"""Privileged ports without staying root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    namespace,
    one_line,
    readline_within,
    server_process,
    timestamp,
)

from timeservice.operations import privileges
from timeservice.programs import server as server_program

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root (to bind ports below 1024, or to become another user)",
)


def client_in(ns: str, *args: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "timeservice.client"]
        + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_of(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as status:
        return {
            key: value.split()
            for key, _, value in (line.partition(":") for line in status)
        }


@pytest.mark.slow
@needs_root
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (Debian: iproute2)")
def test_the_standard_ports_are_served_as_nobody(monkeypatch):
    import pwd

    # Measured by coverage, the server would try to write its data as nobody.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    nobody = pwd.getpwnam("nobody")
    options = (
        "--daytime",
        "13",
        "--time",
        "37",
        "--ntp",
        "123",
        "--local-stratum",
        "10",
    )
    with namespace("op") as ns:
        launcher = ("ip", "netns", "exec", ns)
        with server_process("80", *options, "--user", "nobody", launcher=launcher) as (
            process,
            port,
        ):
            assert port == 80
            lines = [readline_within(process.stdout) for _ in range(4)]
            assert lines[-1] == "Serving as user nobody, group nogroup.\n"
            status = status_of(process.pid)
            assert status["Uid"] == [str(nobody.pw_uid)] * 4
            assert status["Gid"] == [str(nobody.pw_gid)] * 4
            assert status["Groups"] == []
            timestamp(client_in(ns, "127.0.0.1", "80").encode())
            for protocol, port_ in (("daytime", "13"), ("time", "37"), ("ntp", "123")):
                answer = client_in(ns, "--protocol", protocol, "127.0.0.1", port_)
                assert answer.strip()
            process.terminate()
            assert process.wait(TIMEOUT) == 0
            log = process.stderr.read()
    assert "serving as root" not in log, log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "options, problem",
    [
        (["--user", "no-such-user-here"], "no such user: 'no-such-user-here'"),
        (["--user", "root", "--group", "no-such-group"], "no such group"),
    ],
)
def test_an_unknown_account_is_one_line_before_anything_listens(options, problem):
    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX accounts")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "timeservice.server", str(port), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""  # no start-up line: nothing listened
    assert problem in one_line(result.stderr)


def test_root_drops_its_groups_then_its_group_then_itself(monkeypatch):
    calls = []
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(
            os, name, lambda value, name=name: calls.append((name, value))
        )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    privileges.become(privileges.Account("nobody", 65534, "nogroup", 65533))
    assert calls == [("setgroups", []), ("setgid", 65533), ("setuid", 65534)]
    calls.clear()
    monkeypatch.setattr(os, "geteuid", lambda: 65534)  # already that user
    privileges.become(privileges.Account("nobody", 65534, "nogroup", 65533))
    assert calls == [("setuid", 65534)]


def test_only_root_becomes_another_user(monkeypatch):
    if not hasattr(os, "geteuid"):
        pytest.skip("POSIX accounts")
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    with pytest.raises(LookupError, match="only root can serve as another user"):
        privileges.find_account("root")


def test_group_goes_with_user(capsys):
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(["--group", "nogroup"])
    assert exit_info.value.code == 2
    assert "--group goes with --user" in capsys.readouterr().err
