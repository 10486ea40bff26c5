"""The server's and the client's command lines, through main(argv) and as processes."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    listening_socket,
    needs_sigterm,
    one_line,
    oneshot_server,
    recent,
    server_process,
)

from timeservice import __version__
from timeservice.client import TimeClient
from timeservice.programs import client as client_program
from timeservice.programs import server as server_program
from timeservice.programs import server_options
from timeservice.wire.line import parse_timestamp


def free_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,
    )


# The server's command line


def test_server_version(capsys):
    with pytest.raises(SystemExit) as exited:
        server_program.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {__version__}")


def test_server_help_shows_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit):
        server_program.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # as if argparse did not wrap
    assert "example: " in out
    for default in (
        "(default: 8037)",
        "(default: 127.0.0.1)",
        "(default: 256)",
        "(default: 60.0)",
        "(default: 512)",
    ):
        assert default in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-line", "0"],
        ["--max-line", "8"],
        ["--idle-timeout", "nan"],
        ["--idle-timeout", "-1"],
        ["--max-connections", "many"],
        ["70000"],
        ["-1"],
        ["-v", "-q"],
        ["--no-such-option"],
    ],
)
def test_server_rejects_bad_options(capsys, argv):
    with pytest.raises(SystemExit) as exited:
        server_program.main(argv)
    assert exited.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .startswith("python -m timeservice.server: error: ")
    )


def test_server_reports_a_port_in_use_in_one_line(capsys):
    with listening_socket() as port:
        assert server_program.main([str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in err


@pytest.mark.parametrize(
    "address, reason",
    [
        ("nosuch.invalid", "cannot listen on nosuch.invalid port 0: "),
        ("192.0.2.1", "Cannot assign requested address"),
    ],
)
def test_server_reports_a_bad_address_in_one_line(capsys, address, reason):
    assert server_program.main(["-b", address, "0"]) == 1
    assert reason in one_line(capsys.readouterr().err)


@needs_sigterm
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_process_serves_then_stops_on_a_signal(signum):
    with server_process("0") as (process, port):
        with TimeClient("127.0.0.1", port) as time_client:
            recent(time_client.get_time())
        process.send_signal(signum)
        # The rule for every command: Ctrl-C is 130; a SIGTERM stops the
        # server cleanly, 0, as systemd expects of a stop.
        assert process.wait(TIMEOUT) == (130 if signum == signal.SIGINT else 0)
        err = process.stderr.read()
    assert "Traceback" not in err
    assert f"{signal.Signals(signum).name} received, shutting down" in err
    assert "127.0.0.1 port " in err  # the line logged for the connection


@needs_sigterm
@pytest.mark.parametrize(
    "args, offset", [((), timedelta(hours=5, minutes=30)), (("--utc",), timedelta(0))]
)
def test_server_answers_in_local_time_or_utc(args, offset):
    with server_process("0", "-q", *args, env={"TZ": "IST-5:30"}) as (process, port):
        with TimeClient("127.0.0.1", port) as time_client:
            assert recent(time_client.get_time()).utcoffset() == offset
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read().splitlines()
    # Quiet: as root, only the warning that says how not to run as root.
    assert len(log) == (1 if os.geteuid() == 0 else 0), log
    assert all("WARNING serving as root; --user NAME" in line for line in log)


@needs_sigterm
def test_server_process_applies_its_limits():
    options = (
        "--max-line",
        "16",
        "--max-connections",
        "1",
        "--idle-timeout",
        "30",
        "-v",
    )
    with server_process("0", *options) as (process, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as first:
            lines = first.makefile("rb")
            first.sendall(b"send time\n")
            parse_timestamp(lines.readline().decode().strip())
            with socket.create_connection(
                ("127.0.0.1", port), timeout=TIMEOUT
            ) as second:
                assert second.makefile("rb").readline() == b"ERR busy\n"
            first.sendall(b"x" * 17 + b"\n")
            assert lines.readline() == b"ERR line too long\n"
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        err = process.stderr.read()
    assert "b'send time' -> b'" in err  # -v logs each request


def test_server_process_reports_a_port_in_use():
    with listening_socket() as port:
        result = run("timeservice.server", str(port))
    assert result.returncode == 1
    assert "Address already in use" in one_line(result.stderr)


def test_installed_commands_run():
    scripts = Path(sys.executable).parent
    if not (scripts / "timeservice-server").exists():
        pytest.skip("the package is not installed in this environment")
    for command in ("timeservice", "timeservice-server", "timeservice-client"):
        result = subprocess.run(
            [scripts / command, "--version"], capture_output=True, text=True, timeout=30
        )
        assert result.stdout == f"{command} {__version__}\n"


# The client's command line


def test_client_prints_the_servers_answer(server, capsys):
    host, port = server.server_address
    assert client_program.main([host, str(port)]) == 0
    parse_timestamp(capsys.readouterr().out.strip())


def test_client_count_asks_over_one_connection(server, capsys):
    host, port = server.server_address
    assert client_program.main([host, str(port), "-n", "3"]) == 0
    moments = [parse_timestamp(line) for line in capsys.readouterr().out.splitlines()]
    assert len(moments) == 3
    assert moments == sorted(moments)
    server.wait_finished()  # exactly one connection


def test_client_over_ipv6(start_server, capsys):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = start_server("::1").server_address[1]
    assert client_program.main(["::1", str(port)]) == 0
    parse_timestamp(capsys.readouterr().out.strip())


def test_client_says_when_no_server_is_running(capsys):
    port = free_port()
    assert client_program.main(["127.0.0.1", str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"connection refused by 127.0.0.1 port {port}: is the server running?" in err


def test_client_gives_up_after_its_timeout(capsys):
    with listening_socket() as port:
        assert client_program.main(["127.0.0.1", str(port), "--timeout", "0.2"]) == 1
    assert f"no answer from 127.0.0.1 port {port} within 0.2 s" in one_line(
        capsys.readouterr().err
    )


def test_client_reports_a_name_that_does_not_resolve(capsys):
    assert client_program.main(["nosuch.invalid"]) == 1
    assert "cannot resolve 'nosuch.invalid'" in one_line(capsys.readouterr().err)


def test_client_reports_an_err_reply(start_server, connect, capsys):
    busy = start_server(max_connections=1)
    connect(busy).ask()
    host, port = busy.server_address
    assert client_program.main([host, str(port)]) == 1
    assert f"{host} port {port}: server answered 'busy'" in one_line(
        capsys.readouterr().err
    )


def fake_server(behaviour: Callable[[socket.socket], None]):
    """A server for one connection that reads the request, then acts as told."""

    def answer(conn: socket.socket) -> None:
        conn.recv(100)
        behaviour(conn)

    return oneshot_server(answer)


def send_reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize(
    "behaviour, problem",
    [
        (lambda conn: conn.sendall(b"hello\n"), "invalid reply b'hello'"),
        (lambda conn: conn.sendall(b"2026-11-27T10:15:42+01:00\n"), "invalid reply"),
        (lambda conn: conn.sendall(b"x" * 1000), "reply too long"),
        (lambda conn: None, "server closed the connection"),
        (send_reset, "cannot talk to 127.0.0.1 port {port}: Connection reset by peer"),
    ],
    ids=["garbage", "no fraction", "too long", "closed", "reset"],
)
def test_client_reports_a_bad_server(capsys, behaviour, problem):
    with fake_server(behaviour) as port:
        assert client_program.main(["127.0.0.1", str(port)]) == 1
    assert problem.format(port=port) in one_line(capsys.readouterr().err)


def test_client_timeout_bounds_the_whole_reply():
    # A server that trickles a byte every 20 ms would beat a per-read timeout.
    def trickle(conn: socket.socket) -> None:
        pace = threading.Event()
        try:
            for _ in range(500):
                conn.sendall(b"2")
                pace.wait(0.02)
        except OSError:  # the client gave up and closed
            pass

    with fake_server(trickle) as port:
        with TimeClient("127.0.0.1", port, timeout=0.3) as time_client:
            with pytest.raises(TimeoutError):
                time_client.get_time()


def test_client_rejects_bad_options(capsys):
    for argv in (["localhost", "http"], ["-n", "0"], ["--timeout", "0"]):
        with pytest.raises(SystemExit) as exited:
            client_program.main(argv)
        assert exited.value.code == 2
    assert "error: " in capsys.readouterr().err


def test_client_version(capsys):
    with pytest.raises(SystemExit):
        client_program.main(["--version"])
    assert capsys.readouterr().out.strip().endswith(__version__)


def test_client_process_against_a_closed_port():
    port = free_port()
    result = run("timeservice.client", "127.0.0.1", str(port), "--timeout", "2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "is the server running?" in one_line(result.stderr)


@needs_sigterm
def test_client_process_talks_to_a_server_process():
    with server_process("0", "-q") as (process, port):
        result = run("timeservice.client", "127.0.0.1", str(port), "-n", "2")
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        parse_timestamp(line)


@pytest.mark.parametrize(
    "argv, environ, problem",
    [
        (["--max-line", "3"], {}, "--max-line must leave room for 'send time'"),
        (["--max-per-network", "-1"], {}, "--max-per-network must be 0 or more"),
        (["--local-stratum", "10"], {}, "--local-stratum goes with --ntp"),
        (["--ntp", "0", "--upstream-id", "GPS"], {}, "--upstream-id goes with"),
        (["--group", "nogroup"], {}, "--group goes with --user"),
        (["--ntp", "123"], {"LISTEN_FDS": "1"}, "the sockets come from systemd"),
        (["--ntp", "0", "--local-stratum", "10"], {}, None),
    ],
)
def test_the_rules_between_the_servers_options(argv, environ, problem):
    """The cross-option rules, one function, called without a command line."""
    args = server_options.build_parser("server").parse_args(argv)
    args.activated = "LISTEN_FDS" in environ
    found = server_options.check_arguments(args)
    assert found == problem or (problem is not None and problem in found)


def test_the_servers_help_groups_its_options(capsys):
    with pytest.raises(SystemExit):
        server_options.build_parser("server").parse_args(["--help"])
    out = capsys.readouterr().out
    groups = ["where it listens:", "limits on every client:"]
    groups += ["the standard protocols and NTP's clock:", "running it as a daemon:"]
    assert all(group in out for group in groups)
    options = out[out.index("\noptions:") :]
    assert options.index("  --allow") > options.index("limits on every client:")
    assert options.index("  --workers") > options.index("running it as a daemon:")
