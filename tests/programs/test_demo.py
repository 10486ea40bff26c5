"""The demo: python -m timeservice runs a server and its clients in one process."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, listening_socket, one_line

from timeservice.programs import demo as launcher
from timeservice.wire.line import parse_timestamp

ANSWER = re.compile(r"client (\d+) sent 'send time', got (\S+)")


def answers(out: str) -> list[str]:
    """The timestamps the demo printed, checked to be in client order."""
    found = ANSWER.findall(out)
    assert [int(number) for number, _ in found] == list(range(1, len(found) + 1))
    for _, text in found:
        parse_timestamp(text)
    return [text for _, text in found]


def test_demo_prints_the_startup_line_the_exchange_and_the_stop(capsys):
    assert launcher.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Serving time on 127\.0\.0\.1 port [1-9]\d* \.\.\.", lines[0])
    assert len(answers("\n".join(lines))) == 1
    assert lines[-1] == "Server stopped."


def test_demo_runs_many_clients_at_once(capsys):
    assert launcher.main(["--clients", "8"]) == 0
    assert len(answers(capsys.readouterr().out)) == 8


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "::1"])
def test_demo_on_other_addresses(capsys, address):
    if ":" in address and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    assert launcher.main(["-b", address]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Serving time on {address} port ")
    assert len(answers(out)) == 1


@pytest.mark.parametrize(
    "bound, host", [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("192.0.2.7", "192.0.2.7")]
)
def test_client_host_reaches_a_wildcard_through_loopback(bound, host):
    assert launcher.client_host(bound) == host


def test_demo_reports_a_port_in_use(capsys):
    with listening_socket() as port:
        assert launcher.main([str(port)]) == 1
    assert "Address already in use" in one_line(capsys.readouterr().err)


def test_demo_reports_a_failed_client(capsys, monkeypatch):
    class RefusedClient:
        def __init__(self, host, port):
            pass

        def __enter__(self):
            raise ConnectionRefusedError("connection refused")

        def __exit__(self, *exc_info):
            pass

    monkeypatch.setattr(launcher, "TimeClient", RefusedClient)
    assert launcher.main(["-n", "2"]) == 1
    captured = capsys.readouterr()
    assert "client 1 failed: connection refused" in captured.err
    assert "client 2 failed: connection refused" in captured.err
    assert captured.out.splitlines()[-1] == "Server stopped."


def test_demo_as_a_process_with_nothing_installed():
    result = subprocess.run(
        [sys.executable, "-S", "-m", "timeservice"],  # -S: no site-packages
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert len(answers(result.stdout)) == 1
    assert "Traceback" not in result.stderr
