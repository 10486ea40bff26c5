"""What a user meets: Ctrl-C and closed pipes end a program quietly, every
mistake is one line, a server's bytes are printed escaped, names with
several addresses, the log under a flood, and units safe by default."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, one_line, oneshot_server, readline_within, until

from timeservice import client
from timeservice.programs import client as client_program
from timeservice.programs import demo, opening, options, server_options
from timeservice.programs import server as server_program
from timeservice.programs import skew as skew_program
from timeservice.server import TimeHandler
from timeservice.transport.datagram import DatagramServer
from timeservice.wire import rfc868
from timeservice.wire.line import parse_timestamp

on_posix = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def program(module: str, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


# Ctrl-C and closed pipes


@on_posix
@pytest.mark.slow
def test_ctrl_c_ends_the_demo_at_once_without_a_traceback():
    demo = program("timeservice", "-n", "10000")
    try:
        assert readline_within(demo.stdout).startswith("Serving time on")
        demo.send_signal(signal.SIGINT)  # while its clients start
        assert demo.wait(TIMEOUT) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
        _, err = demo.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err


def test_a_ctrl_c_inside_a_held_block_comes_when_the_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with options.ctrl_c_held():
            signal.raise_signal(signal.SIGINT)
            reached.append("the rest of the block")
    assert reached == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_block_leaves_an_ignored_ctrl_c_ignored(monkeypatch):
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_IGN)
    with options.ctrl_c_held():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_ctrl_c_while_the_demo_starts_serving_waits_until_it_serves(
    monkeypatch, capsys
):
    started = []
    real_start = threading.Thread.start

    def start_on_ctrl_c(thread: threading.Thread) -> None:
        if not started:  # the first thread the demo starts serves
            signal.raise_signal(signal.SIGINT)
            real_start(thread)
            started.append(thread)
        else:
            real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_on_ctrl_c)
    assert demo.main([]) == 130
    [serving] = started
    assert not serving.is_alive()  # shut down, not left on a closed socket
    assert "Traceback" not in capsys.readouterr().err


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port that accepts and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@on_posix
@pytest.mark.slow
@pytest.mark.parametrize("module", ["timeservice.client", "timeservice.skew"])
def test_ctrl_c_ends_the_client_and_skew_quietly(module):
    with silent_port() as port:
        target = (
            ["127.0.0.1", str(port)]
            if module.endswith("client")
            else [f"127.0.0.1:{port}"]
        )
        asking = program(module, *target, "--timeout", "60")
        try:
            # Its connection is in the backlog: it is waiting for the answer.
            with contextlib.suppress(subprocess.TimeoutExpired):
                asking.wait(0.5)
            asking.send_signal(signal.SIGINT)
            assert asking.wait(TIMEOUT) == 130
        finally:
            if asking.poll() is None:
                asking.kill()
            _, err = asking.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err


@on_posix
@pytest.mark.slow
def test_a_closed_pipe_ends_the_demo_quietly():
    demo = program("timeservice", "-n", "3000")  # more than a pipe holds
    assert demo.stdout.readline().startswith("Serving time on")
    demo.stdout.close()  # as `| head -1` does
    assert demo.wait(TIMEOUT) == 141  # 128 + SIGPIPE, as the shell expects
    assert "Traceback" not in demo.stderr.read()
    demo.stderr.close()


@on_posix
@pytest.mark.slow
def test_a_closed_pipe_ends_the_client_and_skew_quietly(start_server):
    server = start_server()
    where = "{}:{}".format(*server.server_address[:2])
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for module, args in (
        ("timeservice.client", [where, "-n", "3000", "--offset"]),  # more than a pipe
        ("timeservice.skew", [where, where]),  # all at the end, in one write
    ):
        asking = program(module, *args, env=buffered)  # a pipe buffers output
        asking.stdout.close()  # as `| head -0` does
        assert asking.wait(TIMEOUT) == 141, module
        err = asking.stderr.read()
        asking.stderr.close()
        assert "Traceback" not in err and "Exception ignored" not in err, err


# One line for each mistake


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example"])
def test_a_name_idna_refuses_is_one_line(name, capsys):
    assert client_program.main([name]) == 1
    assert f"cannot resolve {name!r}: not a host name" in one_line(
        capsys.readouterr().err
    )
    assert server_program.main(["-b", name, "0"]) == 1
    assert f"cannot listen on {name} port 0: not a host name" in one_line(
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "module, mistake, status",
    [
        ("timeservice", ["-n", "0"], 2),
        ("timeservice", ["--clients"], 2),
        ("timeservice.server", ["--workers", "0"], 2),  # 2.0.0: 17 lines of usage
        ("timeservice.server", ["--no-such-option"], 2),
        ("timeservice.server", ["--no-line"], 2),
        ("timeservice.client", ["--protocol", "smtp"], 2),
        ("timeservice.client", ["--udp"], 2),
        ("timeservice.skew", [], 3),  # a monitoring plugin's UNKNOWN
        ("timeservice.skew", ["-w", "x", "127.0.0.1"], 3),
    ],
)
def test_every_usage_error_is_one_line_with_a_hint(module, mistake, status):
    run = subprocess.run(
        [sys.executable, "-m", module, *mistake],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == status
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"python -m {module}: error: ")
    assert run.stderr.endswith(f"(see python -m {module} --help)\n")


@on_posix
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize(
    "module, args",
    [
        ("timeservice", []),
        ("timeservice.client", ["{where}"]),
        ("timeservice.client", ["{where}", "--offset", "-n", "2"]),
        ("timeservice.client", ["{where}", "--json"]),
        ("timeservice.skew", ["{where}"]),
        ("timeservice.server", ["0"]),
    ],
)
def test_a_full_disk_is_named_as_what_it_is(start_server, module, args):
    """2.0.0: `client > /dev/full` said "cannot talk to 127.0.0.1 port 8037:
    No space left on device", blaming the server for the disk."""
    where = f"127.0.0.1:{start_server().server_address[1]}"
    with open("/dev/full", "w") as full:
        run = subprocess.run(
            [sys.executable, "-m", module, *(a.format(where=where) for a in args)],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
        )
    assert run.returncode == 1
    said = [line for line in run.stderr.splitlines() if " WARNING " not in line]
    assert said == [
        f"python -m {module}: cannot write the output: No space left on device"
    ]


def test_an_ipv6_address_with_a_port_is_told_its_brackets(capsys):
    assert client_program.main(["::1:9", "--timeout", "1"]) == 1
    err = one_line(capsys.readouterr().err)
    assert "an IPv6 address with a port goes in brackets: [::1]:9" in err


def test_json_for_a_plain_query_too(start_server, capsys):
    port = start_server().server_address[1]
    assert client_program.main([f"127.0.0.1:{port}", "--json", "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        answer = json.loads(line)
        assert answer["protocol"] == "line" and answer["server"].endswith(str(port))
        moment = parse_timestamp(answer["answer"])
        assert abs(moment - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "0"])
@pytest.mark.parametrize("main", [client_program.main, skew_program.main])
def test_a_timeout_that_is_no_time_is_a_usage_error(main, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["127.0.0.1:1", "--timeout", value])
    assert exit_info.value.code in (2, 3)  # argparse's; skew's UNKNOWN
    err = capsys.readouterr().err
    assert "--timeout" in err and "Traceback" not in err


def test_no_passed_socket_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("LISTEN_FDS", "0")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    assert server_program.main([]) == 1
    assert "LISTEN_FDS=0: systemd passed no socket" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("version", ["3.10", "3.9"])
def test_an_old_python_is_told_which_it_needs(version):
    found = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python3"))
    python = str(found[-1]) if found else shutil.which(f"python{version}")
    if python is None or subprocess.run([python, "-c", ""]).returncode != 0:
        pytest.skip(f"no Python {version} here")
    run = subprocess.run(
        [python, "-m", "timeservice"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert one_line(run.stderr).startswith("timeservice needs Python 3.11 or newer")


# A server's bytes, printed


def test_what_a_server_sends_is_printed_escaped_and_bounded(capsys):
    hostile = b"\x1b[2J\x1b]0;owned\x07" + b"A" * 4000 + b"\r\n"
    with oneshot_server(hostile) as port:
        assert (
            client_program.main(["--protocol", "daytime", "127.0.0.1", str(port)]) == 0
        )
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.startswith(r"\x1b[2J\x1b]0;owned\x07AAA")
    assert len(out) < 300  # a Daytime reply is read up to 256 bytes


# Names, ports, and what came back


def test_the_client_takes_host_colon_port(start_server, capsys):
    server = start_server()
    host, port = server.server_address[:2]
    assert client_program.main([f"{host}:{port}"]) == 0
    assert client_program.main([f"[::1]:{port}"]) == 1  # parsed; nothing listens there
    assert "::1 port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        client_program.main([f"{host}:{port}", str(port)])  # the port twice
    assert "the port is given twice" in capsys.readouterr().err


@pytest.fixture
def two_address_name(monkeypatch):
    """A name that resolves to ::1 first, then to 127.0.0.1, as a hosts file
    listing ::1 first makes localhost."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "twohost":
            return real(host, port, *args, **kwargs)
        return real("::1", port, *args, **kwargs) + real(
            "127.0.0.1", port, *args, **kwargs
        )

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "twohost"


def test_a_name_with_two_addresses_is_served_on_both(two_address_name):
    argv = ["-b", two_address_name, "0", "--time", "0"]
    args = server_options.parse_arguments("server", argv)
    opened = opening.open_bound("server", args, opening.Settings.from_arguments(args))
    assert opened is not None
    try:
        bound = [
            (type(server).__name__, server.server_address[:2])
            for _, _, servers in opened
            for server in servers
        ]
        hosts = {address[0] for _, address in bound}
        assert hosts == {"::1", "127.0.0.1"}
        # Port 0 picked one port per service, the same on both addresses.
        for kind in ("TimeServer", "OneShotServer", "DatagramServer"):
            assert len({address[1] for name, address in bound if name == kind}) == 1
    finally:
        opening.close_all(opened)


def test_the_udp_client_tries_each_address_of_a_name(two_address_name, serving):
    server = serving(DatagramServer(("127.0.0.1", 0), TimeHandler))
    port = server.server_address[1]  # nothing on ::1: refused, then 127.0.0.1
    sample = client.ask_time(two_address_name, port, udp=True)
    assert sample.error < 2


def test_a_reply_in_another_protocol_is_named(serving, start_server):
    time_server = serving(DatagramServer(("127.0.0.1", 0), TimeHandler))
    with pytest.raises(client.ReplyError, match="4 bytes that are not an NTP reply"):
        client.ask_ntp("127.0.0.1", time_server.server_address[1], timeout=1)
    stamp = rfc868.encode(1_800_000_000)
    with oneshot_server(stamp) as port:
        with client.TimeClient("127.0.0.1", port) as asking:
            with pytest.raises(client.ReplyError, match="after 4 bytes that are not"):
                asking.get_time()


# The log under a flood of accepted connections


def test_a_flood_of_connections_logs_a_bounded_number_of_lines(start_server, caplog):
    caplog.set_level(logging.INFO, logger="timeservice")
    server = start_server()
    for _ in range(200):
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
            sock.sendall(b"send time\n")
            sock.makefile("rb").readline()
    server.wait_finished(200)
    server.closed_log.flush(force=True)
    lines = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
    assert sum("closed after 1 request(s)" in line for line in lines) == 20
    assert lines[-1] == f"{200 - 20} more connection(s) closed in 0 s"


def test_the_demo_still_shows_its_clients_coming_and_going(capsys):
    from timeservice.__main__ import main as demo

    assert demo(["-n", "3"]) == 0
    assert capsys.readouterr().out.count(" got ") == 3


# The units


def test_the_units_listen_on_loopback_only():
    for unit in sorted((ROOT / "scripts" / "systemd").glob("*.socket")):
        listens = [
            line.split("=", 1)[1]
            for line in unit.read_text().splitlines()
            if line.startswith("Listen")
        ]
        assert listens, unit.name
        for address in listens:
            assert address.startswith(("127.0.0.1:", "[::1]:")), (unit.name, address)


@on_posix
@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--protocol", "daytime"],
        ["--protocol", "daytime", "--udp"],
        ["--protocol", "time"],
        ["--protocol", "time", "--udp"],
        ["--protocol", "ntp", "--burst"],
    ],
    ids=lambda options: " ".join(options) or "line",
)
def test_head_1_on_the_client_is_quiet_on_every_protocol(serve, options):
    """`client HOST -n 5 | head -1`: 2.0.0 printed "cannot talk to ...:
    Broken pipe", blaming the server for the pipe. More answers than a pipe
    holds, so that the client writes after the pipe is closed."""
    from timeservice.server import (
        DatagramServer,
        DaytimeHandler,
        NtpServer,
        OneShotServer,
        TimeHandler,
        TimeServer,
    )

    protocol = options[1] if options else "line"
    udp = "--udp" in options
    if protocol == "line":
        server = serve(TimeServer, None)
    elif protocol == "ntp":
        server = serve(NtpServer, None, local_stratum=10, upstream=None, burst=None)
    elif udp:
        handler = DaytimeHandler if protocol == "daytime" else TimeHandler
        server = serve(DatagramServer, handler, burst=None)
    else:
        handler = DaytimeHandler if protocol == "daytime" else TimeHandler
        server = serve(OneShotServer, handler)
    where = "{}:{}".format(*server.server_address[:2])
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    asking = program("timeservice.client", where, "-n", "3000", *options, env=buffered)
    assert readline_within(asking.stdout)  # the first answer, as head -1 reads it
    asking.stdout.close()
    assert asking.wait(TIMEOUT) == 141
    err = asking.stderr.read()
    asking.stderr.close()
    assert err == ""


# Signals at start-up: sent at chosen moments by an audit hook in the process
# itself (each import of the package's modules, a socket made, a thread
# started), so that every moment is hit on every run.

LAUNCH = """
import os, runpy, signal, sys
module, event, nth, name = sys.argv[1:5]
sys.argv = [module, *sys.argv[5:]]
seen = 0

def hook(happened, args):
    global seen
    if happened != event or (event == "import" and not args[0].startswith("time")):
        return
    seen += 1
    if seen == int(nth):
        os.kill(os.getpid(), getattr(signal, name))

sys.addaudithook(hook)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# A moment: the nth of an audit event. The package's 4th import comes after
# the face's first, which holds the signals; the rest are while it loads,
# or once its main() runs (a socket, a thread).
MOMENTS = [("import", 4), ("import", 10), ("import", 20), ("socket.__new__", 1)]
COMMANDS = {
    "timeservice": ["-n", "50"],
    "timeservice.client": ["127.0.0.1:{port}", "-n", "3"],
    "timeservice.skew": ["127.0.0.1:{port}"],
    "timeservice.server": ["0"],
}


def launched(module: str, event: str, nth: int, name: str, *args: str):
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, module, event, str(nth), name, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@on_posix
@pytest.mark.parametrize("module", COMMANDS)
@pytest.mark.parametrize("event, nth", MOMENTS)
def test_ctrl_c_at_any_moment_of_start_up_ends_a_command_with_130(
    start_server, module, event, nth
):
    port = start_server().server_address[1]
    args = [arg.format(port=port) for arg in COMMANDS[module]]
    process = launched(module, event, nth, "SIGINT", *args)
    try:
        status = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=TIMEOUT)
    assert status == 130, err  # 2.0.0: a traceback, then killed by the signal
    assert "Traceback" not in err


@on_posix
@pytest.mark.parametrize("event, nth", [*MOMENTS, ("socket.bind", 1)])
def test_the_server_acts_on_sighup_and_sigterm_from_its_first_moment(event, nth):
    hup = launched("timeservice.server", event, nth, "SIGHUP", "0")
    term = launched("timeservice.server", event, nth, "SIGTERM", "0")
    try:
        # A SIGHUP at start-up reloads once the server serves: 2.0.0 died of it.
        assert readline_within(hup.stdout).startswith("Serving time on")
        until(hup.stderr, re.compile("SIGHUP received; reloaded the command line"))
        hup.send_signal(signal.SIGTERM)
        assert hup.wait(TIMEOUT) == 0
        # A SIGTERM at start-up stops it as soon as it serves, cleanly.
        assert term.wait(TIMEOUT) == 0
    finally:
        for process in (hup, term):
            if process.poll() is None:
                process.kill()
    hup_err = hup.communicate(timeout=TIMEOUT)[1]
    term_err = term.communicate(timeout=TIMEOUT)[1]
    assert "SIGTERM received, shutting down" in hup_err + term_err
    assert "Traceback" not in hup_err + term_err


@on_posix
def test_sigterm_ends_a_client_as_the_system_does(start_server):
    """The rule's other half: a command but the server ends on SIGTERM as the
    system ends it (143 in a shell), at start-up too."""
    port = start_server().server_address[1]
    process = launched(
        "timeservice.client", "import", 10, "SIGTERM", f"127.0.0.1:{port}"
    )
    assert process.wait(TIMEOUT) == -signal.SIGTERM
    process.communicate(timeout=TIMEOUT)


# NTS without its extra, and its options

WITHOUT_NTS_EXTRA = """
import runpy, sys
sys.modules["OpenSSL"] = None  # as where the nts extra is not installed
module, *sys.argv[1:] = sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "module, args",
    [
        ("timeservice.client", ["--protocol", "nts", "127.0.0.1:9"]),
        (
            "timeservice.server",
            ["--no-line", "--ntp", "0", "--nts-ke", "0", "--nts-cert", "c.pem",
             "--nts-key", "k.pem"],
        ),
    ],
)  # fmt: skip
def test_nts_without_its_extra_is_one_line_that_says_what_to_install(module, args):
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_NTS_EXTRA, module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 1
    said = [line for line in run.stderr.splitlines() if " WARNING " not in line]
    assert len(said) == 1 and "pip install 'timeservice[nts]'" in said[0], run.stderr


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--ntp", "0", "--nts-ke", "0"], "--nts-ke needs --nts-cert FILE"),
        (["--nts-ke", "0", "--nts-cert", "c", "--nts-key", "k"], "goes with --ntp"),
        (["--nts-cert", "c"], "--nts-cert goes with --nts-ke"),
        (["--ntp", "0", "--nts-key", "k"], "--nts-cert and --nts-key go together"),
        (["--nts-cookie-keys", "keys"], "--nts-cookie-keys goes with --ntp"),
    ],
)
def test_the_nts_options_that_do_not_fit_are_usage_errors(args, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        server_program.main(args)
    assert exited.value.code == 2
    assert problem in one_line(capsys.readouterr().err)


def test_a_ca_is_for_nts_alone(capsys):
    with pytest.raises(SystemExit):
        client_program.main(["--ca", "ca.pem", "127.0.0.1:9"])
    assert "--ca goes with --protocol nts" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--source-table-size", "0"], "must be positive: '0'"),
        (["--source-table-size", "12Q"], "not a size in bytes: '12Q'"),
        (["--ntp", "0", "--upstream", "[::1"], "'[::1'"),
        (["--ntp", "0", "--upstream-stratum", "2", "--upstream-id", "TOOLONG"], "id"),
        (["--allow", "192.0.2.0/33"], "192.0.2.0/33"),
        (["--ntp", "0", "--nts-ke", "0", "--nts-server", "[::1"], "'[::1'"),
    ],
)
def test_a_value_an_option_cannot_take_is_one_line(args, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        server_program.main(args)
    assert exited.value.code == 2
    assert problem in one_line(capsys.readouterr().err)


def test_the_values_options_take_are_read_as_given():
    args = server_options.parse_arguments(
        "server",
        ["--ntp", "0", "--source-table-size", "2M", "--upstream", "none"]
        + ["--nts-ke", "0", "--nts-cert", "c", "--nts-key", "k"]
        + ["--nts-server", "ntp.example:1123"],
    )
    assert args.source_table_size == 2 * 2**20
    assert args.upstream is None
    assert args.nts_server == "ntp.example:1123"
