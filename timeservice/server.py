"""The time server: socketserver's threading TCP server speaking the time protocol.

Run it with ``python -m timeservice.server [-b ADDRESS] [PORT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import queue
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from . import __version__
from .cli import format_address, port_number, positive, program_name
from .protocol import (
    COMMAND,
    DEFAULT_PORT,
    MAX_LINE_BYTES,
    REQUEST,
    Clock,
    error_line,
    local_now,
    request_error,
    strip_line_ending,
    time_line,
    utc_now,
)

try:
    import resource
except ImportError:  # not on Windows
    resource = None

logger = logging.getLogger(__name__)

IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 512
MIN_CONNECTIONS = 128
RESERVED_FILES = 32  # for the listening socket, standard streams, logging
CONNECTION_THREAD = "timeservice connection"  # the name of the threads that serve

LINE_TOO_LONG = error_line("line too long")
BUSY = error_line("busy")
CLOCK_UNAVAILABLE = error_line("clock unavailable")
OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def connection_cap(requested: int) -> int:
    """Lower the cap to what the open-file limit leaves room for, but not below 128."""
    if resource is None:
        return requested
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return min(requested, max(MIN_CONNECTIONS, soft - RESERVED_FILES))


class TimeRequestHandler(socketserver.StreamRequestHandler):
    """Answers the request lines of one connection until EOF, an error or a deadline.

    The handler never sets a socket timeout (that would add a poll to every
    read) and reads no clock: it counts the requests it answers, and the
    server's service_actions() keeps each connection's deadline from that
    count and cuts off the connections that are overdue.
    """

    disable_nagle_algorithm = True  # replies are small and must not wait for an ACK
    rbufsize = 0  # socketserver's reader is replaced in setup()
    read_buffer = 4096

    def setup(self) -> None:
        super().setup()
        # socket.makefile()'s reader runs Python code on every read; a
        # buffered reader over the file descriptor reads in C.
        self.rfile.close()
        self.rfile = open(
            self.connection.fileno(), "rb", self.read_buffer, closefd=False
        )
        self.peer = format_address(self.client_address)
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.requests = self.requests_seen = 0
        self.stop_reason: str | None = None
        self.deadline = time.monotonic() + self.server.idle_timeout
        self.server.track(self)

    def handle(self) -> None:
        max_line, clock = self.server.max_line, self.server.clock
        limit = max_line + len(b"\r\n")
        readline = self.rfile.readline
        while True:
            line = readline(limit)
            if line == REQUEST:  # the usual request needs no closer look
                self.answer(line, self.time_reply(clock))
                continue
            request = strip_line_ending(line)
            if len(request) > max_line:
                self.close_with(LINE_TOO_LONG)
                return
            if not line.endswith(b"\n"):  # EOF, or the server cut the read short
                if self.stop_reason:
                    self.close_with(error_line(self.stop_reason))
                    return
                if not request:
                    return
                # A last request without its LF is still answered; EOF follows.
            self.answer(line, request_error(request) or self.time_reply(clock))

    def finish(self) -> None:
        super().finish()
        why = f" ({self.stop_reason})" if self.stop_reason else ""
        logger.info("%s: closed after %d request(s)%s", self.peer, self.requests, why)

    def time_reply(self, clock: Clock) -> bytes:
        """The clock's time as a reply line, or ERR if the clock fails.

        Never a made-up time; the failure is logged in one line.
        """
        try:
            return time_line(clock)
        except Exception as exc:
            logger.error("%s: cannot read the clock: %r", self.peer, exc)
            return CLOCK_UNAVAILABLE

    def answer(self, line: bytes, reply: bytes) -> None:
        if self.debug:
            logger.debug("%s: %r -> %r", self.peer, strip_line_ending(line), reply)
        self.connection.sendall(reply)
        self.requests += 1  # counted, so the server can see progress

    def close_with(self, line: bytes) -> None:
        """Send a last line and make sure it arrives before the connection closes.

        Closing a socket with unread input makes Linux send a reset that can
        overtake the line, so the input is drained first, for a bounded time.
        """
        logger.debug("%s: closing with %r", self.peer, line)
        self.wfile.write(line)
        self.connection.shutdown(socket.SHUT_WR)
        drain(self.connection, self.server.linger)

    def expire(self, reason: str) -> None:
        """Cut the connection short; called from another thread (the server's)."""
        if self.stop_reason is None:
            # Wakes the blocked read: complete lines already received are
            # still answered, then the handler says why and closes.
            self.stop_reason = reason
            self.deadline = time.monotonic() + self.server.linger
            try:
                self.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        else:  # still here after the linger: the client does not read
            abort(self.connection)


def abort(sock: socket.socket) -> None:
    """Wake a thread blocked on `sock`, and make its close a reset.

    A reset frees the replies queued for a client that does not read them,
    where a normal close would keep them in the kernel for minutes.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def drain(sock: socket.socket, seconds: float, chunk: int = 4096) -> None:
    """Read and discard input until EOF or for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(chunk):
                return
        except OSError:
            return


class TimeServer(socketserver.ThreadingTCPServer):
    """A threading TCP server for the time protocol, with limits on every client.

    A connection may send a line of at most `max_line` bytes and must finish
    each line within `idle_timeout` seconds; at most `max_connections` are
    served at once, and one more gets ``ERR busy``.
    """

    allow_reuse_address = True  # restart at once on the same port
    request_queue_size = socket.SOMAXCONN
    sweep_interval = 0.1  # how often, at most, deadlines are checked
    linger = 0.5  # how long a closing connection is drained
    send_buffer = 64 * 1024  # replies the kernel holds for a client that reads slowly
    shutdown_grace = 1.0  # how long handlers may finish after server_close()
    thread_idle = 10.0  # how long a thread waits for another connection, then ends
    accept_pause = (0.01, 0.5)  # first and longest pause when accept() lacks files
    one_cpu = True  # see serve_forever()

    def __init__(
        self,
        server_address: tuple[str, int],
        handler_class: type[TimeRequestHandler] = TimeRequestHandler,
        *,
        max_line: int = MAX_LINE_BYTES,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        clock: Clock = local_now,
        bind_and_activate: bool = True,
    ) -> None:
        host, port = server_address
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_connections = connection_cap(max_connections)
        if self.max_connections < max_connections:
            logger.warning(
                "open-file limit allows %d connections, not %d",
                self.max_connections,
                max_connections,
            )
        self.clock = clock
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, TimeRequestHandler | None] = {}
        self._next_sweep = 0.0
        self._threads_idle = 0  # idle threads that no connection has claimed
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()
        self._thread_pool: set[threading.Thread] = set()
        self._failed_accepts = 0
        super().__init__(address, handler_class, bind_and_activate)

    def server_bind(self) -> None:
        # Accepted connections inherit the listening socket's buffer size.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        if self.address_family == socket.AF_INET6:
            try:  # "::" serves IPv4 too, as http.server does
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()

    def get_request(self) -> tuple:
        """Accept a connection; when out of file descriptors, pause instead of spinning.

        The connection that cannot be accepted stays in the backlog, so the
        listening socket stays readable and serve_forever() would retry at
        once, forever. Pausing longer each time, up to half a second, leaves
        the CPU to the handlers whose connections will free files. The log
        says when this starts and when it ends, not at every attempt.
        """
        try:
            accepted = super().get_request()
        except OSError as exc:
            if exc.errno not in OUT_OF_FILES:
                raise
            self._failed_accepts += 1
            if self._failed_accepts == 1:
                logger.warning("cannot accept connections: %s; pausing", exc.strerror)
            first, longest = self.accept_pause
            time.sleep(min(longest, first * 2 ** (self._failed_accepts - 1)))
            raise
        if self._failed_accepts:
            logger.warning(
                "accepting connections again, after %d failed attempts",
                self._failed_accepts,
            )
            self._failed_accepts = 0
        return accepted

    def verify_request(self, request, client_address) -> bool:
        """Admit a connection while under the cap; refuse it with ``ERR busy``."""
        with self._lock:
            if len(self._connections) < self.max_connections:
                self._connections[request] = None
                return True
        logger.info(
            "%s: refused, %d connections open",
            format_address(client_address),
            self.max_connections,
        )
        try:  # a new socket's buffer is empty: this neither blocks nor is overtaken
            request.sendall(BUSY)
        except OSError:
            pass
        return False

    def track(self, handler: TimeRequestHandler) -> None:
        """Let service_actions() see the handler's deadline."""
        with self._lock:
            self._connections[handler.request] = handler

    def shutdown_request(self, request) -> None:
        with self._lock:  # after this, no other thread touches the socket
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(), keeping this thread and its handlers on one CPU.

        Only one thread at a time runs Python (the GIL). Threads spread over
        several CPUs hand it to each other across CPUs, and under load those
        handoffs cost more than the requests themselves; on one CPU they are
        cheap. Set `one_cpu` to False to let the threads roam.
        """
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
        if self.one_cpu and cpus:
            spread = sorted(cpus)[os.getpid() % len(cpus)]  # servers on other CPUs
            os.sched_setaffinity(0, {spread})
        try:
            super().serve_forever(poll_interval)
        finally:
            if self.one_cpu and cpus:
                os.sched_setaffinity(0, cpus)

    def service_actions(self) -> None:
        """Keep the deadlines, and cut off the connections that are overdue.

        A connection that has answered since the last sweep gets a new
        deadline: the handlers only count, so they read no clock.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        with self._lock:
            for handler in self._connections.values():
                if handler is None:
                    continue
                if (
                    handler.requests != handler.requests_seen
                    and not handler.stop_reason
                ):
                    handler.requests_seen = handler.requests
                    handler.deadline = now + self.idle_timeout
                elif handler.deadline < now:
                    handler.expire("timeout")

    def process_request(self, request, client_address) -> None:
        """Hand the connection to an idle thread, or start a thread for it.

        Starting a thread costs more than serving a connection's one request,
        so each thread serves connection after connection, and ends after
        `thread_idle` seconds without one.
        """
        with self._lock:
            claimed = self._threads_idle > 0
            if claimed:
                self._threads_idle -= 1
        if claimed:
            self._handoff.put((request, client_address))
            return
        thread = threading.Thread(
            target=self._serve_connections,
            args=(request, client_address),
            name=CONNECTION_THREAD,
            daemon=self.daemon_threads,
        )
        with self._lock:
            self._thread_pool.add(thread)
        thread.start()

    def _serve_connections(self, request, client_address) -> None:
        try:
            while request is not None:
                self.process_request_thread(request, client_address)
                request, client_address = self._next_connection()
        finally:
            with self._lock:
                self._thread_pool.discard(threading.current_thread())

    def _next_connection(self) -> tuple:
        with self._lock:
            self._threads_idle += 1
        while True:
            try:
                return self._handoff.get(timeout=self.thread_idle)
            except queue.Empty:
                with self._lock:
                    if self._threads_idle > 0:  # not claimed: end the thread
                        self._threads_idle -= 1
                        return None, None
                # process_request() has claimed this thread: a connection is coming

    def server_close(self) -> None:
        """Stop listening, answer the lines already received, then join the threads."""
        self.socket.close()
        with self._lock:
            for handler in self._connections.values():
                if handler is not None:
                    handler.expire("server shutting down")
            threads = list(self._thread_pool)
        for _ in threads:
            self._handoff.put((None, None))  # ends a thread once it is idle
        force = threading.Timer(self.shutdown_grace, self._abort_connections)
        force.start()
        try:
            super().server_close()
            if self.block_on_close:
                for thread in threads:
                    thread.join()
        finally:
            force.cancel()
            force.join()

    def _abort_connections(self) -> None:
        with self._lock:
            for request in self._connections:
                abort(request)

    def handle_error(self, request, client_address) -> None:
        """Log a failed connection; a client that resets or vanishes is ordinary."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.debug("%s: %s", format_address(client_address), exc)
        else:
            logger.exception("%s: unexpected error", format_address(client_address))


def add_address_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """The -b ADDRESS and PORT arguments, as http.server has them."""
    parser.add_argument(
        "-b",
        "--bind",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to listen on; '::' for all IPv6 and IPv4, "
        "'0.0.0.0' for all IPv4 (default: %(default)s)",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_number,
        default=port,
        help="port to listen on, 0 for any free port (default: %(default)s)",
    )


def open_server(prog: str, args: argparse.Namespace, **options) -> TimeServer | None:
    """Bind a server as the arguments say, or say in one line why it can't."""
    try:
        return TimeServer((args.bind, args.port), **options)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"{prog}: cannot listen on {args.bind} port {args.port}: {reason}",
            file=sys.stderr,
        )
        return None


def announce(server: TimeServer) -> None:
    """Print the start-up line, with the address really bound (port 0 resolved)."""
    print(f"Serving time on {format_address(server.server_address)} ...", flush=True)


def configure_logging(level: int) -> None:
    """Log to stderr with a time stamp, from `level` up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")


@contextlib.contextmanager
def stop_on_signals(server: TimeServer) -> Iterator[None]:
    """While in the block, SIGINT and SIGTERM stop serve_forever() gracefully."""

    def stop(signum, frame):
        logger.info("%s received, shutting down", signal.Signals(signum).name)
        threading.Thread(
            target=server.shutdown
        ).start()  # not from serve_forever's thread

    previous = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the time server from the command line."""
    prog = program_name("timeservice.server")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Answer 'send time' with the current date and time over TCP.",
        epilog=f"example: {prog} -b 0.0.0.0 {DEFAULT_PORT}",
    )
    add_address_arguments(parser, DEFAULT_PORT)
    parser.add_argument(
        "--max-line",
        type=positive(int),
        default=MAX_LINE_BYTES,
        metavar="BYTES",
        help="longest request line, line ending not counted (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=positive(float),
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to send each request line (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive(int),
        default=MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; more get 'ERR busy' (default: %(default)s)",
    )
    parser.add_argument(
        "--utc", action="store_true", help="answer in UTC instead of local time"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="log every request"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="log only warnings and errors"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    args = parser.parse_args(argv)
    if args.max_line < len(COMMAND):
        parser.error(f"--max-line must leave room for {COMMAND!r}")

    configure_logging(
        logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.quiet
        else logging.INFO
    )
    server = open_server(
        prog,
        args,
        max_line=args.max_line,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        clock=utc_now if args.utc else local_now,
    )
    if server is None:
        return 1
    with stop_on_signals(server), server:
        announce(server)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
