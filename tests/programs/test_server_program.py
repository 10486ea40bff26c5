"""The server's command line with the standard protocols."""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import sys

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    free_port,
    one_line,
    readline_within,
    server_process,
    udp_socket,
)

from timeservice.programs import opening
from timeservice.programs import server as server_program
from timeservice.server import OneShotServer


def test_the_server_process_serves_every_protocol_asked_for():
    options = ("--daytime", "0", "--time", "0", "--ntp", "0", "--local-stratum", "10")
    with server_process("0", *options) as (process, _):
        lines = [readline_within(process.stdout) for _ in range(3)]
        ports = {}
        for line, name, how in zip(
            lines,
            ("daytime", r"time \(RFC 868\)", "NTP"),
            (r"\(TCP, UDP\)", r"\(TCP, UDP\)", r"\(UDP\)"),
            strict=True,
        ):
            found = re.fullmatch(
                rf"Serving {name} on 127\.0\.0\.1 port (\d+) {how} \.\.\.\n", line
            )
            assert found, line
            ports[name] = int(found[1])
        for argv in (
            ["--protocol", "daytime", "--udp"],
            ["--protocol", "time"],
            ["--protocol", "ntp"],
        ):
            port = ports[
                {"daytime": "daytime", "time": r"time \(RFC 868\)", "ntp": "NTP"}[
                    argv[1]
                ]
            ]
            result = run_client(
                *argv, "127.0.0.1", str(port), "--offset", "--json", "--burst"
            )
            assert result.returncode == 0, result.stderr
            figures = json.loads(result.stdout)
            assert abs(figures["offset"]) <= figures["error"]
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert "NTP: answering as stratum 10" in log
    assert "Traceback" not in log


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "timeservice.client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_server_says_why_a_standard_port_cannot_be_had(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert server_program.main(["0", "--ntp", str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in err


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--local-stratum", "10"], "--local-stratum goes with --ntp"),
        (["--ntp", "0", "--local-stratum", "16"], "--local-stratum"),
        (["--daytime", "70000"], "not a port number"),
    ],
)
def test_the_server_rejects_bad_protocol_options(capsys, argv, problem):
    with pytest.raises(SystemExit) as exited:
        server_program.main(argv)
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err


def test_a_udp_port_taken_for_daytime_is_one_line(capsys):
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        port = tcp.getsockname()[1]  # free for TCP; now take it for UDP
        try:
            taken = udp_socket(port=port)
        except OSError:
            pytest.skip("the UDP port of the same number is in use")
    with taken:
        assert server_program.main(["0", "--daytime", str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in err


def test_port_0_tries_again_when_udp_is_taken(monkeypatch, capsys):
    def taken(*args, **kwargs):
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(opening, "DatagramServer", taken)
    assert server_program.main(["0", "--time", "0"]) == 1
    assert "no port free for both TCP and UDP on 127.0.0.1" in one_line(
        capsys.readouterr().err
    )


def test_when_one_service_cannot_listen_the_others_are_closed(monkeypatch, capsys):
    opened = []
    real = OneShotServer

    def recording(*args, **kwargs):
        server = real(*args, **kwargs)
        opened.append(server)
        return server

    monkeypatch.setattr(opening, "OneShotServer", recording)
    with udp_socket() as taken:
        port = str(taken.getsockname()[1])
        assert server_program.main(["0", "--daytime", "0", "--ntp", port]) == 1
    assert opened and all(server.socket.fileno() == -1 for server in opened)
    assert "cannot listen" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "bind, rules, warned",
    [
        ("127.0.0.1", ["--deny", "::1", "--allow", "127.0.0.0/8"], ["--deny ::1/128"]),
        ("::1", ["--allow", "127.0.0.1"], ["--allow 127.0.0.1/32"]),
        ("::", ["--deny", "::1", "--deny", "192.0.2.0/24"], []),
        ("127.0.0.1", ["--deny", "::ffff:127.0.0.0/104"], []),  # IPv4, as clients
    ],
)
def test_a_rule_no_client_can_match_is_one_warning_line(bind, rules, warned):
    with server_process("0", "-b", bind, *rules) as (process, _):
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    warnings = [line for line in log.splitlines() if "can match no client" in line]
    assert len(warnings) == len(warned), log
    for line, rule in zip(warnings, warned, strict=True):
        assert f"WARNING {rule} can match no client" in line


@pytest.mark.parametrize("bind", ["127.0.0.1:{port}", "[::1]:{port}"])
def test_the_server_takes_host_port_as_the_client_does(bind):
    if bind.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    port = free_port()
    # 2.0.0: "cannot listen on 127.0.0.1:18037 port 8037: Name or service not known"
    with server_process("-b", bind.format(port=port)) as (process, bound):
        assert bound == port
        process.terminate()
        assert process.wait(TIMEOUT) == 0


def test_a_port_given_twice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        server_program.main(["-b", "127.0.0.1:18037", "8037"])
    assert exited.value.code == 2
    assert "the port is given twice: 18037 and 8037" in capsys.readouterr().err


def test_ntp_served_alone_and_its_ports_read_from_the_ready_file(tmp_path):
    """--no-line leaves the line protocol out (2.0.0 served it on 8037 beside
    NTP, and failed where 8037 was taken); the ready file says what is
    served, for a program that started the server on port 0."""
    ready = tmp_path / "ready.json"
    options = ("--no-line", "--ntp", "0", "--local-stratum", "10")
    with server_process(*options, "--ready-file", str(ready)) as (process, port):
        said = json.loads(ready.read_text())  # written before the start-up lines
        assert said["pid"] == process.pid
        assert said["serving"] == [  # nothing else: no TCP socket at all
            {
                "protocol": "ntp",
                "transport": "udp",
                "address": "127.0.0.1",
                "port": port,
            }
        ]
        result = run_client("--protocol", "ntp", "--burst", f"127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr
        process.terminate()
        assert process.wait(TIMEOUT) == 0


def test_the_ready_file_names_every_socket(tmp_path):
    ready = tmp_path / "ready.json"
    args = ("0", "--daytime", "0", "--ntp", "0", "--ready-file", str(ready))
    with server_process(*args) as (process, port):
        served = json.loads(ready.read_text())["serving"]
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    kinds = [(s["protocol"], s["transport"]) for s in served]
    assert kinds == [
        ("line", "tcp"),
        ("daytime", "tcp"),
        ("daytime", "udp"),
        ("ntp", "udp"),
    ]
    assert served[0]["port"] == port and served[0]["address"] == "127.0.0.1"
    assert not list(tmp_path.glob(".ready-*"))  # written whole, renamed into place
