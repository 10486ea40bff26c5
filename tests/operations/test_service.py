"""A service watches its servers: one whose loop ends or hangs ends the
service, with one line and a non-zero status, or goes quiet to systemd's
watchdog; and the servers stop together."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from conftest import ROOT, TIMEOUT, bounded, ntp_port_of, server_process, udp_socket

from timeservice.operations import prefork, service
from timeservice.server import TimeHandler, TimeServer
from timeservice.transport.datagram import DatagramServer

FAULTY = """
import sys, threading
from timeservice.programs import server as server_program
from timeservice.transport import datagram
Server = datagram.DatagramServer
verify, actions, hang = Server.verify_request, Server.service_actions, threading.Event()
def faulty_verify(self, request, client_address):
    if request[0] == b"die":
        self.dying = True
    if request[0] == b"hang":
        hang.wait()
    return verify(self, request, client_address)
def faulty_actions(self):
    if getattr(self, "dying", False):
        raise RuntimeError("boom")
    actions(self)
Server.verify_request, Server.service_actions = faulty_verify, faulty_actions
sys.exit(server_program.main(sys.argv[1:]))
"""


@contextlib.contextmanager
def faulty_service(env: dict | None = None) -> Iterator[tuple]:
    """The server program with NTP, whose loop fails after b"die" and hangs
    on b"hang"; and its NTP port."""
    process = subprocess.Popen(
        [sys.executable, "-c", FAULTY, "0", "--ntp", "0", "--local-stratum", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield process, ntp_port_of(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def test_a_server_whose_loop_ends_ends_the_service(connect):
    class Failing(DatagramServer):
        dying = False

        def verify_request(self, request, client_address):
            self.dying = True
            return False

        def service_actions(self):  # outside every request's error handling
            if self.dying:
                raise RuntimeError("boom")
            super().service_actions()

    line = TimeServer(("127.0.0.1", 0))
    failing = Failing(("127.0.0.1", 0), TimeHandler)
    both = service.Service([line, failing])
    raised: list[BaseException] = []

    def serve() -> None:
        try:
            both.serve_forever(0.01)
        except service.ServerStopped as exc:
            raised.append(exc)

    serving = threading.Thread(target=serve)
    serving.start()
    with udp_socket() as sock:
        sock.sendto(b"", failing.server_address)
        serving.join(TIMEOUT)
    assert not serving.is_alive()
    [stopped] = raised
    assert str(stopped).endswith("stopped: RuntimeError('boom')")
    assert str(stopped).startswith("time server (UDP, 127.0.0.1 port")
    assert line.socket.fileno() == -1 and failing.socket.fileno() == -1


@pytest.mark.slow
def test_a_server_thread_that_dies_ends_the_program_with_one_line():
    with faulty_service() as (process, port), udp_socket() as sock:
        sock.sendto(b"die", ("127.0.0.1", port))
        assert process.wait(timeout=TIMEOUT) == 1
        err = process.stderr.read()
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "ERROR" in line]
    assert "stopped: RuntimeError('boom'); ending the service" in line


def test_the_watch_beats_only_while_every_loop_turns():
    entered, release = threading.Event(), threading.Event()

    class Hanging(DatagramServer):
        def verify_request(self, request, client_address):
            if request[0] == b"hang":
                entered.set()
                release.wait(TIMEOUT)
            return super().verify_request(request, client_address)

    servers = [Hanging(("127.0.0.1", 0), TimeHandler), TimeServer(("127.0.0.1", 0))]
    watched = service.Service(servers)
    beats = threading.Semaphore(0)
    watched.watch(0.05, beats.release)
    serving = threading.Thread(target=watched.serve_forever, args=(0.01,))
    serving.start()
    try:
        assert beats.acquire(timeout=TIMEOUT)  # turning: beats come
        with udp_socket() as sock:
            sock.sendto(b"hang", servers[0].server_address)
            assert entered.wait(TIMEOUT)
            beats.acquire(timeout=0.2)  # one may have been on its way
            assert not beats.acquire(timeout=0.5)  # ten intervals: none
            release.set()
            assert beats.acquire(timeout=TIMEOUT)  # turning again
    finally:
        release.set()
        bounded(watched.stop)
        serving.join(TIMEOUT)
    assert not serving.is_alive()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets")
def test_systemds_watchdog_hears_from_the_service_only_while_it_serves(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        manager.settimeout(TIMEOUT)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"}
        with faulty_service(env) as (process, port), udp_socket() as sock:
            assert b"READY=1" in manager.recv(4096)
            assert manager.recv(4096) == b"WATCHDOG=1"  # every 0.25 s
            assert manager.recv(4096) == b"WATCHDOG=1"
            sock.sendto(b"hang", ("127.0.0.1", port))
            manager.settimeout(1.0)
            heard = []
            with contextlib.suppress(TimeoutError):
                for _ in range(10):
                    heard.append(manager.recv(4096))
            assert heard.count(b"WATCHDOG=1") <= 1  # on its way, then none
            assert process.poll() is None  # hung: systemd ends it, not itself


@pytest.mark.slow
def test_a_sigterm_right_after_the_start_up_line_always_stops_the_server():
    """A signal that comes just before the main thread enters its wait is
    handled once that thread runs Python again: 2.0.0 then waited forever,
    3 starts in 600 here. The service is woken by the interpreter's own
    byte (signal.set_wakeup_fd) now: 1,200 starts, none hung."""
    for _ in range(40):
        with server_process("0", "-q") as (process, _):
            process.terminate()
            assert process.wait(TIMEOUT) == 0


def test_the_servers_of_a_service_stop_together():
    """Each shutdown() waits for its loop's next turn: one after another,
    every protocol would add its poll interval to the stop."""
    stopping = threading.Barrier(3, timeout=TIMEOUT)

    class Stopping(TimeServer):
        def shutdown(self) -> None:
            stopping.wait()  # all three asked to stop before any has
            super().shutdown()

    servers = [Stopping(("127.0.0.1", 0)) for _ in range(3)]
    together = service.Service(servers)
    serving = threading.Thread(target=together.serve_forever, args=(0.5,))
    serving.start()
    bounded(together.stop)
    serving.join(TIMEOUT)
    assert not serving.is_alive() and not stopping.broken
    assert all(server.socket.fileno() == -1 for server in servers)


def refuse_to_start(thread: threading.Thread) -> None:
    raise AssertionError("a thread started from a signal handler")


def test_a_stop_signal_starts_no_thread(monkeypatch):
    """A handler runs between any two steps of the main thread, even inside
    Thread.start(), holding threading's own lock: the stop it makes only
    wakes the service, and the service stops at once."""
    server = TimeServer(("127.0.0.1", 0))
    together = service.Service([server])
    with server, service.stop_on_signals(together.stop):
        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", refuse_to_start)
            signal.raise_signal(signal.SIGTERM)
        together.serve_forever(0.5)  # stopped before it served
        assert server.socket.fileno() == -1


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_a_stop_signal_to_the_serving_thread_ends_the_service():
    servers = [TimeServer(("127.0.0.1", 0)) for _ in range(2)]
    together = service.Service(servers)
    main = threading.get_ident()

    def stop_once_it_answers() -> None:
        for server in servers:
            address = server.server_address[:2]
            with socket.create_connection(address, timeout=TIMEOUT) as conn:
                conn.sendall(b"send time\n")
                assert conn.recv(100).startswith(b"20")
        signal.pthread_kill(main, signal.SIGINT)

    asking = threading.Thread(target=stop_once_it_answers)
    with service.stop_on_signals(together.stop):
        asking.start()
        together.serve_forever(0.5)
    asking.join(TIMEOUT)
    assert not asking.is_alive()
    assert all(server.socket.fileno() == -1 for server in servers)


@pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="needs POSIX signal masks"
)
@pytest.mark.parametrize("before_reset", [True, False])
def test_a_hangup_held_while_a_worker_starts_reloads_once_it_serves(before_reset):
    """A worker holds SIGHUP blocked until its service handles it: one that
    came meanwhile, even before the worker reset the parent's handlers, is
    not lost but reloads once handled."""
    reloads = []
    previous = {sig: signal.getsignal(sig) for sig in prefork.HANDLED}
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # as at the fork
    try:
        # While the worker starts; at this thread, as a worker has no other.
        if not before_reset:
            prefork.reset_signals()
        signal.pthread_kill(threading.get_ident(), signal.SIGHUP)
        if before_reset:
            prefork.reset_signals()
        assert signal.SIGHUP in signal.sigpending()
        with service.stop_on_signals(lambda why: None, lambda: reloads.append(1)):
            assert signal.SIGHUP not in signal.sigpending()
            for _ in range(1000):  # the handler runs between two steps
                if reloads:
                    break
        assert reloads == [1]
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        for sig, handler in previous.items():
            signal.signal(sig, handler)
