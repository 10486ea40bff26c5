"""Fixtures: real servers on loopback port 0, clients whose every read times out."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from timeservice.clock.system import Clock
from timeservice.policy.access import AccessList
from timeservice.server import TimeServer
from timeservice.wire import ntp
from timeservice.wire.line import parse_timestamp, timestamp_ns

# No read in the tests waits longer than this. It only bounds a hang, so it
# is generous: a loaded CI machine once took more than 5 s for a start-up line.
TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(r"Serving .+? on (\S+) port (\d+)(?: \(.+\))? \.\.\.\n")

# Windows ends a process on SIGTERM without running its handler.
needs_sigterm = pytest.mark.skipif(
    sys.platform == "win32", reason="stops a server with SIGTERM (POSIX)"
)
on_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="clients from 127.0.0.2 and up: all of 127/8 is loopback on Linux",
)

# Derandomised, so that CI runs the same cases every time; no deadline, as
# the machine is shared; no database of failures left in the tree.
settings.register_profile(
    "timeservice",
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("timeservice")


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_as_from_a_terminal() -> Iterator[None]:
    """The tests press Ctrl-C (SIGINT) as a terminal would. A shell starts a
    background job with SIGINT ignored, and the programs a test starts would
    inherit that and never hear it; so the session hears SIGINT as Python's
    default has it while it runs."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def timestamp(line: bytes) -> datetime:
    """The moment a reply line carries; fails the test if it is anything else."""
    assert line.endswith(b"\n"), line
    return parse_timestamp(line[:-1].decode("ascii"))


def recent(moment: datetime) -> datetime:
    """A moment a client returned, checked to be aware and within a few
    seconds of this machine's clock (the servers under test read it too)."""
    assert moment.utcoffset() is not None, moment
    assert abs(moment - datetime.now(moment.tzinfo)) < timedelta(seconds=5), moment
    return moment


def one_line(text: str) -> str:
    """The text, checked to be one line and no traceback."""
    assert "Traceback" not in text
    assert text.count("\n") == 1, text
    return text


def free_port() -> int:
    """A port free for TCP and UDP alike, for programs that cannot take port 0."""
    for _ in range(20):
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for TCP and UDP")


def daemon_port() -> int:
    """A free UDP port on 127.0.0.1 for a stand-in for the clock's daemon
    that the service believes: a privileged one, which only root can bind
    (the tests that need it are skipped otherwise)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the daemon's stand-in needs a privileged port: root")
    for port in range(1023, 823, -1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no privileged UDP port free on 127.0.0.1")


def udp_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A UDP socket bound on loopback whose reads time out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(TIMEOUT)
    return sock


def replies(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Every datagram that arrives until none has for `quiet` seconds; the
    socket's own timeout is given back, for the reads after."""
    got: list[bytes] = []
    timeout = sock.gettimeout()
    sock.settimeout(quiet)
    try:
        for _ in range(10_000):
            got.append(sock.recv(512))
    except TimeoutError:
        pass
    finally:
        sock.settimeout(timeout)
    return got


@contextlib.contextmanager
def listening_socket() -> Iterator[int]:
    """A port that accepts connections into its backlog and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess:
    """What Python `code` prints, run apart with the project importable and
    `environment` added (TIMESERVICE_PORTABLE, say), bounded in time."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **environment},
    )


def readline_within(stream, seconds: float = TIMEOUT) -> str:
    """The next line, or a failure after `seconds` instead of a hang.

    select() cannot tell: the first readline() may have buffered more lines.
    """
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=seconds)


@contextlib.contextmanager
def server_process(
    *args: str, env: dict | None = None, launcher: Sequence[str] = ()
) -> Iterator[tuple]:
    """A ``python -m timeservice.server`` process and the port it says it serves.

    `launcher` goes before the command, as in ``faketime -f +2.5s``; the
    process runs in a group of its own, so that a launcher's child ends too.
    """
    process = subprocess.Popen(
        [*launcher, sys.executable, "-m", "timeservice.server", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        assert ready, "no start-up line"
        line = process.stdout.readline()
        match = STARTUP.fullmatch(line)
        if match is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _, said = process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"start-up line {line!r}, and on stderr: {said}")
        yield process, int(match[2])
    finally:
        # End its whole group (its own session), which may outlive it: its
        # workers, a launcher's child.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=TIMEOUT)
        forget_faketime(process.pid)


FAKETIME_LIBRARY = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)


def faketime(shift: str) -> tuple[str, ...]:
    """A launcher that shifts a program's clock by `shift` (``+0.003s``).

    libfaketime is preloaded through env, so the program is the process
    itself; without the library's path, the wrapper (faketime_wrapper()).
    """
    if FAKETIME_LIBRARY is None:
        return faketime_wrapper(shift)
    return ("env", f"LD_PRELOAD={FAKETIME_LIBRARY}", f"FAKETIME={shift}")


# faketime (the wrapper, and the library preloaded) names a semaphore and a
# shared memory segment after its pid, and leaves both behind when it is
# killed; a later wrapper given that pid fails ("sem_open: File exists").
FAKETIME_LEFT = ("/dev/shm/sem.faketime_sem_{}", "/dev/shm/faketime_shm_{}")

# A shell removes the two named after its own pid, which only a dead process
# can have left, and becomes the wrapper, pid and all.
CLEAR_AND_WRAP = (
    "rm -f " + " ".join(path.format("$$") for path in FAKETIME_LEFT) + "; "
    'exec faketime -f "$0" "$@"'
)


def forget_faketime(pid: int) -> None:
    """Remove what faketime left under the pid of a process that has ended
    and been reaped: killed, it could not."""
    for path in FAKETIME_LEFT:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.format(pid))


def faketime_wrapper(shift: str) -> tuple[str, ...]:
    """The faketime wrapper as a launcher (``faketime -f shift``), clear of
    what an earlier wrapper with its pid left behind."""
    return ("sh", "-c", CLEAR_AND_WRAP, shift)


def children(pid: int) -> set[int]:
    """The pids of a process's children, from /proc (Linux)."""
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return {int(child) for child in listed.read().split()}


def until(stream, pattern: re.Pattern, lines: int = 50) -> re.Match:
    """The first of the next `lines` lines that matches, each read with a timeout."""
    for _ in range(lines):
        found = pattern.search(readline_within(stream))
        if found:
            return found
    raise AssertionError(f"no line like {pattern.pattern}")


def signal_launched(process: subprocess.Popen, signum: int) -> None:
    """Signal what `process` runs: its children if it is a launcher, else itself.

    faketime passes no signal on, and a launcher that died before its child
    would leave the child unreaped; signalled first, the child ends, and the
    launcher reaps it and exits with its status.
    """
    try:
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as children:
            pids = [int(pid) for pid in children.read().split()]
    except OSError:  # no /proc: not Linux, where these launchers are not used
        pids = []
    for pid in pids or [process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class RecordingServer(TimeServer):
    """A TimeServer that reports each connection it has finished with."""

    def __init__(self, *args, **kwargs) -> None:
        self.finished: queue.Queue = queue.Queue()
        self.sweeps = 0
        self.swept = threading.Condition()
        super().__init__(*args, **kwargs)

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.finished.put(request)

    def wait_finished(self, count: int = 1) -> None:
        for _ in range(count):
            self.finished.get(timeout=TIMEOUT)

    def sweep(self, now: float) -> None:
        super().sweep(now)
        with self.swept:
            self.sweeps += 1
            self.swept.notify_all()

    def wait_sweeps(self, count: int) -> None:
        """Wait until the watchdog has looked at the deadlines `count` more times."""
        with self.swept:
            target = self.sweeps + count
            assert self.swept.wait_for(lambda: self.sweeps >= target, TIMEOUT)


def bounded(action, *args) -> None:
    """Run `action` in a thread and fail, instead of hanging, if it does not return."""
    thread = threading.Thread(target=action, args=args)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"{action.__name__}() did not return"


class TakenOver(RecordingServer):
    """A RecordingServer that says what the loop had of each connection a
    handler takes over."""

    def __init__(self, *args, **kwargs) -> None:
        self.taken: queue.Queue = queue.Queue()
        super().__init__(*args, **kwargs)

    def taken_over(self, request):
        held = super().taken_over(request)
        self.taken.put(held)
        return held


@pytest.fixture
def serving(caplog):
    """Serve any server in a thread; at teardown, stop and close each, and check
    that its socket is closed, no thread is left and nothing logged an error."""
    caplog.set_level(logging.DEBUG, logger="timeservice")
    threads_before = threading.active_count()
    running = []

    def start(server):
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}
        )
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        bounded(server.shutdown)
        thread.join(TIMEOUT)
        bounded(server.server_close)
        assert server.socket.fileno() == -1
    assert threading.active_count() == threads_before
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


@pytest.fixture
def start_server(serving):
    """Start RecordingServers on port 0, served as `serving` serves them."""

    def start(host: str = "127.0.0.1", **options) -> RecordingServer:
        return serving(RecordingServer((host, 0), **options))

    return start


@pytest.fixture
def server(start_server) -> RecordingServer:
    return start_server()


class Connection:
    """A raw client socket with line reads that time out instead of hanging."""

    def __init__(self, server: TimeServer) -> None:
        host, port = server.server_address[:2]
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline(1024)

    def ask(self, request: bytes = b"send time\n") -> bytes:
        self.send(request)
        return self.line()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def connect():
    """Open raw connections to a server; all are closed at teardown."""
    opened = []

    def open_connection(server: TimeServer) -> Connection:
        connection = Connection(server)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


@pytest.fixture
def serve(serving):
    """Start a server class on `host`, port 0, served as `serving` serves them;
    a class that takes no handler is given `handler=None`."""

    def start(server_class, handler, host="127.0.0.1", **settings):
        if handler is None:
            return serving(server_class((host, 0), **settings))
        return serving(server_class((host, 0), handler, **settings))

    return start


def port_of(server) -> int:
    return server.server_address[1]


def ntp_port_of(process: subprocess.Popen) -> int:
    """The NTP port a server process says it serves, from its start-up lines."""
    for _ in range(3):
        line = process.stdout.readline()
        if line.startswith("Serving NTP on"):
            return int(line.split(" port ")[1].split()[0])
    raise AssertionError(f"no NTP start-up line: {line!r}")


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@contextlib.contextmanager
def datagram_from(source: str) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        yield sock


@contextlib.contextmanager
def oneshot_server(reply: bytes | Callable[[socket.socket], None]):
    """A TCP server for one connection: it sends `reply`, or hands the
    connection to it, and closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                if callable(reply):
                    reply(conn)
                else:
                    conn.sendall(reply)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(TIMEOUT)


def access(allow=(), deny=()) -> AccessList:
    return AccessList.from_options(allow, deny)


def reply_to(request: bytes, **fields) -> bytes:
    """An NTP server's reply to `request`, with `fields` set as a test needs."""
    base = {
        "leap": 0, "version": 4, "mode": 4, "stratum": 2, "poll": 0, "precision": -20,
        "root_delay": 0, "root_dispersion": 0, "reference_id": bytes(4),
        "reference": 0, "origin": ntp.Packet.unpack(request).transmit,
        "receive": 1 << 32, "transmit": 2 << 32,
    }  # fmt: skip
    return ntp.Packet(**{**base, **fields}).pack()


class Moments(Clock):
    """A clock of the test's own: the time is what `moment()` returns, an
    aware datetime, and the zone is that datetime's."""

    def __init__(self, moment) -> None:
        super().__init__()
        self.moment, self._last = moment, None

    def now_ns(self) -> int:
        self._last = self.moment()
        return timestamp_ns(self._last)

    def utc_offset(self, second: int) -> int:
        last = self._last if self._last is not None else self.moment()
        return int(last.utcoffset().total_seconds())


def moments(moment) -> Moments:
    return Moments(moment)


def shifted(shift: timedelta, stall=None) -> Moments:
    """A server clock `shift` ahead of this machine's, optionally slow to answer."""

    def moment():
        if stall is not None:
            stall()
        return datetime.now().astimezone() + shift

    return Moments(moment)


# Hosts of the test's own: network namespaces, removed whatever happens

needs_netns = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and ip (iproute2) to make network namespaces",
)
SERVER_V4, CLIENT_V4 = "192.0.2.1", "192.0.2.2"  # documentation ranges only
SERVER_V6, CLIENT_V6 = "2001:db8::1", "2001:db8::2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=TIMEOUT)


@contextlib.contextmanager
def namespace(tag: str) -> Iterator[str]:
    """A network namespace of the test's own, loopback up; removed after."""
    name = f"ts{tag}{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(
            ["ip", "netns", "del", name], capture_output=True, timeout=TIMEOUT
        )


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces on one veth pair (SERVER_V4 and CLIENT_V4, and
    the IPv6 pair, on a /24 and a /64); removed whatever happens."""
    with namespace("s") as server_ns, namespace("c") as client_ns:
        tag = f"ts{os.getpid()}"
        try:
            ip("link", "add", f"{tag}s", "type", "veth", "peer", "name", f"{tag}c")
            for ns, end, v4, v6 in (
                (server_ns, f"{tag}s", SERVER_V4, SERVER_V6),
                (client_ns, f"{tag}c", CLIENT_V4, CLIENT_V6),
            ):
                ip("link", "set", end, "netns", ns)
                ip("-n", ns, "addr", "add", f"{v4}/24", "dev", end)
                ip("-n", ns, "addr", "add", f"{v6}/64", "dev", end, "nodad")
                ip("-n", ns, "link", "set", end, "up")
            yield server_ns, client_ns
        finally:  # in case it never reached its namespace
            subprocess.run(
                ["ip", "link", "del", f"{tag}s"], capture_output=True, timeout=TIMEOUT
            )


@contextlib.contextmanager
def lan(count: int) -> Iterator[list[tuple[str, str]]]:
    """`count` hosts of the test's own on one switch (a bridge in a
    namespace of its own), at 192.0.2.1, .2, ... on a /24: each host's
    namespace and address; all removed whatever happens."""
    with contextlib.ExitStack() as stack:
        switch = stack.enter_context(namespace("sw"))
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        hosts = []
        for n in range(count):
            host = stack.enter_context(namespace(f"h{n}"))
            port = f"p{n}"
            ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port)
            ip("-n", host, "link", "set", port, "netns", switch)
            ip("-n", switch, "link", "set", port, "master", "br0", "up")
            address = f"192.0.2.{n + 1}"
            ip("-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            hosts.append((host, address))
        yield hosts


@contextlib.contextmanager
def a_user_of_the_tests_own() -> Iterator[str]:
    """A system user made for the test, without a home or a shell; removed after."""
    name = f"tsf{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         name],
        check=True, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=TIMEOUT)


def in_namespace(ns: str, code: str, *args: str) -> str:
    """What Python `code` prints, run in namespace `ns` (the project's code
    importable); a failure fails the test with its stderr."""
    run = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


# NTS: certificates of a lab of the test's own, where the nts extra is here

try:
    import OpenSSL  # noqa: F401
    from cryptography import x509 as _x509  # noqa: F401

    NTS_EXTRA = True
except ImportError:
    NTS_EXTRA = False

needs_nts = pytest.mark.skipif(
    not NTS_EXTRA, reason="needs the nts extra: pip install 'timeservice[nts]'"
)


@dataclasses.dataclass(frozen=True)
class Lab:
    """A CA of the test's own and certificates it signed, as PEM files:
    `cert`/`key` name localhost, 127.0.0.1 and SERVER_V4; the others are what a
    client must refuse."""

    ca: str
    cert: str
    key: str
    wrong_name: str  # for elsewhere.example only
    expired: str
    self_signed: str
    self_signed_key: str


def make_lab(folder: Path) -> Lab:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def write(file: str, data: bytes) -> str:
        path = folder / file
        path.write_bytes(data)
        return str(path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("timeservice test CA"))
        .issuer_name(name("timeservice test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 30 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())

    def leaf(names: list, before, after, issuer=ca, signer=ca_key, subject="lab"):
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer.subject if issuer is not None else name(subject))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
            )
            .sign(signer, hashes.SHA256())
        )

    lab_names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(SERVER_V4)),  # a namespace's KE host
    ]
    good = leaf(lab_names, now - day, now + 30 * day)
    wrong = leaf([x509.DNSName("elsewhere.example")], now - day, now + 30 * day)
    expired = leaf(lab_names, now - 30 * day, now - day)
    lone = leaf(lab_names, now - day, now + 30 * day, issuer=None, signer=key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Lab(
        ca=write("ca.pem", pem(ca)),
        cert=write("cert.pem", pem(good) + pem(ca)),
        key=write("key.pem", key_pem),
        wrong_name=write("wrong.pem", pem(wrong) + pem(ca)),
        expired=write("expired.pem", pem(expired) + pem(ca)),
        self_signed=write("lone.pem", pem(lone)),
        self_signed_key=write("lone-key.pem", key_pem),
    )


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    """The lab's certificates, made once a session (needs the nts extra)."""
    if not NTS_EXTRA:
        pytest.skip("needs the nts extra: pip install 'timeservice[nts]'")
    return make_lab(tmp_path_factory.mktemp("lab"))
