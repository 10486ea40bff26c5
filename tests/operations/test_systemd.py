"""systemd: socket activation, readiness, the watchdog and the unit files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    free_port,
    needs_nts,
    needs_sigterm,
    one_line,
    readline_within,
    recent,
)

from timeservice import client
from timeservice.operations import systemd
from timeservice.programs import opening, server_options
from timeservice.programs import server as server_program
from timeservice.wire import ntp


@contextlib.contextmanager
def notify_socket(directory: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(directory / "notify"))
        sock.settimeout(TIMEOUT)
        yield sock


def notices(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def wait_for_ntp(port: int) -> None:
    """Ask until the server answers: systemd-socket-activate binds in its own
    time. Unconnected, the socket hears no ICMP refusal; each try waits 0.2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(75):  # 15 s at most
            sock.sendto(ntp.request_packet(0), ("127.0.0.1", port))
            try:
                sock.recvfrom(512)
                return
            except TimeoutError:
                continue
    raise AssertionError("no NTP answer within 15 s")


@pytest.mark.slow
@needs_sigterm
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="needs systemd-socket-activate (Debian: systemd; scripts/test installs it "
    "as root)",
)
def test_systemd_passes_named_tcp_and_udp_sockets(tmp_path):
    line, daytime, time_, ntp_port = (free_port() for _ in range(4))
    at = "127.0.0.1:{}".format
    # It passes on no environment but its -E's; coverage's, if it measures.
    passed = [f"NOTIFY_SOCKET={tmp_path / 'notify'}"] + [
        f"{name}={os.environ[name]}"
        for name in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_RUN")
        if name in os.environ
    ]
    environment = [word for setting in passed for word in ("-E", setting)]
    # It listens on datagram or stream sockets, not both; it passes on the
    # sockets it got, so one runs the other, which runs the server.
    command = [
        *("systemd-socket-activate", "--datagram", "-l", at(ntp_port)),
        *("-l", at(daytime), "-l", at(time_), "--fdname=ntp:daytime:time"),
        *environment,
        *("systemd-socket-activate", "-l", at(line), "-l", at(daytime)),
        *("-l", at(time_), "--fdname=ntp:daytime:time:line:daytime:time"),
        *environment,
        *(sys.executable, "-m", "timeservice.server", "--local-stratum", "10"),
    ]
    with notify_socket(tmp_path) as notify:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_ntp(ntp_port)  # the first datagram starts the server
            sample = client.ask_ntp("127.0.0.1", ntp_port)
            assert abs(sample.offset) <= sample.error
            ready = notices(notify)
            assert ready["READY"] == "1"
            assert f"time on 127.0.0.1 port {line}" in ready["STATUS"]
            with client.TimeClient("127.0.0.1", line) as line_client:
                recent(line_client.get_time())
            for udp in (False, True):
                assert client.ask_daytime("127.0.0.1", daytime, udp=udp).answer
                assert client.ask_time("127.0.0.1", time_, udp=udp).error < 1
            process.send_signal(signal.SIGTERM)  # the server: each program exec()s
            assert notices(notify)["STOPPING"] == "1"
            assert process.wait(TIMEOUT) == 0
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    assert f"Serving time on 127.0.0.1 port {line} (TCP, from systemd) ..." in out
    assert f"Serving NTP on 127.0.0.1 port {ntp_port} (UDP, from systemd) ..." in out
    assert f"Serving daytime on 127.0.0.1 port {daytime} (UDP, from systemd)" in out
    assert "Traceback" not in err


ACTIVATE = """
import os, socket, sys
kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
sockets = [
    open(os.devnull) if kind == "file"
    else socket.socket(socket.AF_UNIX) if kind == "unix"
    else socket.socket(type=kinds[kind])
    for kind in sys.argv[1].split(",")
]
for sock in sockets:
    if getattr(sock, "family", None) == socket.AF_INET:
        sock.bind(("127.0.0.1", 0))
        if sock.type == socket.SOCK_STREAM:
            sock.listen()
spare = [os.dup(sock.fileno()) for sock in sockets]  # above 3, 4, ...
for sock in sockets:
    sock.close()
for number, descriptor in enumerate(spare, 3):
    os.dup2(descriptor, number)
os.environ.update(LISTEN_FDS=str(len(sockets)), LISTEN_FDNAMES=sys.argv[2])
os.environ["LISTEN_PID"] = sys.argv[3] or str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "timeservice.server", *sys.argv[4:]])
"""


@pytest.mark.parametrize(
    "kinds, names, pid, problem",
    [
        ("tcp", "clock", "", "socket 3 is named 'clock'; the names are line, daytime"),
        ("tcp", "ntp", "", "socket 3 (ntp) must be a listening UDP socket"),
        ("tcp,udp", "line:line", "", "socket 4 (line) must be a listening TCP socket"),
        ("tcp", "line", "1", "LISTEN_PID=1 is another process"),
        ("tcp,tcp", "line", "", "names 1 socket(s), LISTEN_FDS=2"),
        ("tcp,file", "line:ntp", "", "descriptor 4 (ntp) is not a socket"),
        ("unix", "line", "", "socket 3 (line) is not an IPv4 or IPv6 socket"),
        ("tcp", "line", "x", "LISTEN_FDS='1' and LISTEN_PID='x' must be numbers"),
        ("tcp", "nts-ke", "", "socket 3 (nts-ke): Key Establishment needs --nts-"),
    ],
)
def test_sockets_that_do_not_fit_are_one_line(kinds, names, pid, problem):
    if not hasattr(os, "dup2") or sys.platform == "win32":
        pytest.skip("descriptors passed as systemd passes them (POSIX)")
    result = subprocess.run(
        [sys.executable, "-c", ACTIVATE, kinds, names, pid],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert problem in one_line(result.stderr)


@needs_nts
def test_a_socket_named_nts_ke_serves_key_establishment(tmp_path, lab):
    """systemd's NTS-KE socket beside its NTP one: the KE sends clients to
    that NTP port, and their requests are authenticated."""
    from timeservice.clients.nts import ask_nts_once, establish

    if not hasattr(os, "dup2") or sys.platform == "win32":
        pytest.skip("descriptors passed as systemd passes them (POSIX)")
    ready = tmp_path / "ready.json"
    command = [sys.executable, "-c", ACTIVATE, "udp,tcp", "ntp:nts-ke", ""]
    command += ["--local-stratum", "10", "--nts-cert", lab.cert, "--nts-key", lab.key]
    command += ["--nts-cookie-keys", str(tmp_path / "keys"), "--ready-file", str(ready)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        said = [readline_within(process.stdout) for _ in range(2)]  # NTP, NTS-KE
        served = json.loads(ready.read_text())["serving"]
        ports = {entry["protocol"]: entry["port"] for entry in served}
        session = establish("127.0.0.1", ports["nts-ke"], ca=lab.ca, timeout=TIMEOUT)
        assert session.ntp_port == ports["ntp"]
        sample = ask_nts_once(session, timeout=TIMEOUT)
        assert abs(sample.offset) <= sample.error
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    assert "from systemd" in said[0]
    assert "Serving NTS-KE on 127.0.0.1 port" in said[1]
    assert "(TCP, TLS 1.3, from systemd)" in said[1]
    assert "Traceback" not in err


def test_passed_sockets_are_served_as_their_names_say(serving):
    """In-process, the way main() serves them, with the descriptors elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LISTEN_FDS", "4")  # --local-stratum needs no --ntp then
        arguments = server_options.parse_arguments(
            "test", ["--local-stratum", "10", "--utc"]
        )
    kinds = [("line", socket.SOCK_STREAM), ("time", socket.SOCK_STREAM)]
    kinds += [("time", socket.SOCK_DGRAM), ("ntp", socket.SOCK_DGRAM)]
    sockets = []
    for _, kind in kinds:
        sock = socket.socket(type=kind)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        sockets.append(sock)
    first = 1000  # where no descriptor is open
    for number, sock in enumerate(sockets, first):
        os.dup2(sock.fileno(), number)
        sock.close()
    environ = {
        "LISTEN_FDS": str(len(kinds)),
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDNAMES": ":".join(name for name, _ in kinds),
        "OTHER": "kept",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(systemd, "FIRST_DESCRIPTOR", first)
        inherited = systemd.inherited_sockets(environ)
    assert environ == {"OTHER": "kept"}  # no child takes the sockets for its own
    settings = opening.Settings.from_arguments(arguments)
    opened = opening.open_inherited(inherited, settings)
    assert [(name, how) for name, how, _ in opened] == [
        ("time", " (TCP, from systemd)"),
        ("time (RFC 868)", " (TCP, from systemd)"),
        ("time (RFC 868)", " (UDP, from systemd)"),
        ("NTP", " (UDP, from systemd)"),
    ]
    line, time_tcp, time_udp, ntp_server = (servers[0] for _, _, servers in opened)
    for server in (line, time_tcp, time_udp, ntp_server):
        serving(server)
    with client.TimeClient("127.0.0.1", line.server_address[1]) as line_client:
        assert recent(line_client.get_time()).utcoffset() == timedelta(0)  # --utc
    for udp, server in ((False, time_tcp), (True, time_udp)):
        assert client.ask_time("127.0.0.1", server.server_address[1], udp=udp).error < 1
    assert abs(client.ask_ntp("127.0.0.1", ntp_server.server_address[1]).offset) < 1


def test_the_notices_reach_the_service_manager(tmp_path, caplog):
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("Unix sockets")
    with notify_socket(tmp_path) as manager:
        notifier = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        notifier.notify("READY=1", "STATUS=Serving")
        assert notices(manager) == {"READY": "1", "STATUS": "Serving"}
    notifier.notify("STOPPING=1")  # the manager is gone: one warning
    notifier.close()
    assert "cannot notify the service manager" in caplog.text
    nowhere = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "nowhere")})
    assert nowhere.sock is None
    assert "cannot reach NOTIFY_SOCKET" in caplog.text
    nowhere.notify("READY=1")  # does nothing
    nowhere.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets")
def test_an_abstract_notify_socket_is_reached(tmp_path):
    name = f"timeservice-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(TIMEOUT)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.notify("READY=1")
        notifier.close()
        assert notices(manager) == {"READY": "1"}


@pytest.mark.parametrize(
    "usec, pid, seconds",
    [
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("500000", "1", None),  # another process's
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_the_watchdog_timeout_systemd_sets(usec, pid, seconds):
    environ = {"WATCHDOG_USEC": usec, "WATCHDOG_PID": pid}
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    environ = {name: value for name, value in environ.items() if value is not None}
    assert systemd.watchdog_seconds(environ) == seconds
    assert environ == {}  # taken out, for no child to take


def test_binding_options_do_not_go_with_passed_sockets(monkeypatch, capsys):
    monkeypatch.setenv("LISTEN_FDS", "1")
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(["--ntp", "123"])
    assert exit_info.value.code == 2
    assert "the sockets come from systemd" in capsys.readouterr().err


UNITS = ROOT / "scripts" / "systemd"


INSTALLING = "**Installing the daemon.**"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def install_steps() -> list[str]:
    """The commands docs/operating.md gives to install the daemon."""
    text = (ROOT / "docs" / "operating.md").read_text()
    after = text[text.index(INSTALLING) :]
    block = after[after.index("```sh\n") + len("```sh\n") :]
    return block[: block.index("```")].strip().splitlines()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="needs systemd-analyze and systemd's units (Debian: systemd; "
    "scripts/test installs it as root)",
)
def test_the_daemon_installs_as_operating_md_says(tmp_path):
    """Each step as the page gives it, into a root of the test's own: the
    virtual environment, the units, systemd-analyze verify (which checks
    that ExecStart= is there); systemctl needs systemd running, and is not
    run. 2.0.0's unit named /usr/local/bin, where no install route put it."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    steps = install_steps()
    assert [step.split()[0] for step in steps] == [
        "python3", "/opt/timeservice/bin/pip", "cp", "systemd-analyze",
        "systemctl", "systemctl", "systemctl",
    ]  # fmt: skip
    for step in steps:
        if step.startswith("systemctl"):
            continue
        command = step.replace("/opt/timeservice", f"{root}/opt/timeservice")
        command = command.replace("/etc/systemd/system", f"{root}/etc/systemd/system")
        command = command.replace("python3 -m venv", f"{sys.executable} -m venv")
        command = command.replace("verify", f"--root={root} verify")
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (step, result.stdout, result.stderr)
        if step.startswith("systemd-analyze"):
            assert result.stderr == "" and result.stdout == ""
    assert (root / "opt/timeservice/bin/timeservice-server").exists()


def test_the_units_sandbox_the_service_and_name_their_sockets():
    units = sorted(UNITS.glob("timeservice*"))
    assert {unit.suffix for unit in units} == {".socket", ".service"}
    service_text = (UNITS / "timeservice.service").read_text()
    for setting in (
        "Type=notify",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{setting}" in service_text
    names = {
        re.search(r"FileDescriptorName=([\w-]+)", unit.read_text())[1]
        for unit in units
        if unit.suffix == ".socket"
    }
    assert names == set(opening.ACTIVATED)
