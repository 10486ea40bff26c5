"""The server program: servers in one process, started and stopped together.

Run it with ``python -m timeservice.server [-b ADDRESS] [PORT] [--daytime PORT]
[--time PORT] [--ntp PORT]``: the line protocol and each standard protocol
asked for, on the same address, under one set of signals and one shutdown.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socketserver
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, capabilities, kernelclock, ntp
from .cli import (
    add_address_arguments,
    announce,
    cannot_listen,
    choose_cpu,
    configure_logging,
    cpu_choice,
    kept_on_cpu,
    listen,
    open_server,
    port_number,
    positive,
    program_name,
    stop_on_signals,
)
from .datagram import DatagramServer
from .protocol import COMMAND, DEFAULT_PORT, MAX_LINE_BYTES, local_now, utc_now
from .server import IDLE_TIMEOUT, MAX_CONNECTIONS, OneShotServer
from .standard import DaytimeHandler, NtpServer, TimeHandler

logger = logging.getLogger(__name__)


class Service:
    """Several servers in one process, with one stop for all of them.

    serve_forever() serves the first server in the calling thread and each
    other one in a thread of its own; stop(), from any other thread, ends
    them all, and each server's server_close() then finishes its clients.
    """

    def __init__(self, servers: Sequence[socketserver.BaseServer]) -> None:
        if not servers:
            raise ValueError("a service needs a server")
        self.servers = list(servers)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        first, *others = self.servers
        threads = [
            threading.Thread(target=server.serve_forever, args=(poll_interval,))
            for server in others
        ]
        for thread in threads:
            thread.start()
        try:
            first.serve_forever(poll_interval)
        finally:
            for server in others:
                server.shutdown()
            for thread in threads:
                thread.join()
            for server in self.servers:
                server.server_close()

    def stop(self) -> None:
        """End serve_forever(); not from the thread that runs it."""
        self.servers[0].shutdown()


# Daytime and Time: option, name in the start-up line, standard port, handler.
STANDARD = {
    "daytime": ("daytime", 13, DaytimeHandler),
    "time": ("time (RFC 868)", 37, TimeHandler),
}
INETD_PORTS = 1024  # Daytime and Time drop datagrams from lower source ports
PORT_TRIES = 10  # port 0: tries to find a port free for both TCP and UDP


def open_pair(
    prog: str,
    host: str,
    port: int,
    handler: type[socketserver.BaseRequestHandler],
    **settings: Any,
) -> list[socketserver.BaseServer] | None:
    """A one-shot TCP server and a UDP server on the same port, or None.

    With port 0 the TCP port is free but the same UDP port may not be; then
    both are tried again on another.
    """
    for _ in range(PORT_TRIES):
        tcp = listen(
            prog,
            host,
            port,
            lambda address: OneShotServer(address, handler, clock=settings["clock"]),
        )
        if tcp is None:
            return None
        bound = tcp.server_address[1]
        try:
            udp = DatagramServer((host, bound), handler, **settings)
        except OSError as exc:
            tcp.server_close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            cannot_listen(prog, host, bound, exc)
            return None
        return [tcp, udp]
    print(f"{prog}: no port free for both TCP and UDP on {host}", file=sys.stderr)
    return None


def open_standard(
    prog: str, args: argparse.Namespace, clock: Callable
) -> list[tuple[str, str, list[socketserver.BaseServer]]] | None:
    """The standard protocols' servers the arguments ask for, or None if one
    cannot listen (those already open are closed again)."""
    datagrams: dict[str, Any] = {"clock": clock}
    if args.no_rate_limit:
        datagrams["burst"] = None
    opened: list[tuple[str, str, list[socketserver.BaseServer]]] = []
    for option, (name, _, handler) in STANDARD.items():
        port = getattr(args, option)
        if port is None:
            continue
        pair = open_pair(
            prog,
            args.bind,
            port,
            handler,
            min_source_port=INETD_PORTS,
            **datagrams,
        )
        if pair is None:
            break
        opened.append((name, " (TCP, UDP)", pair))
    else:
        if args.ntp is None:
            return opened
        ntp_server = listen(
            prog,
            args.bind,
            args.ntp,
            lambda address: NtpServer(
                address, local_stratum=args.local_stratum, **datagrams
            ),
        )
        if ntp_server is not None:
            return [*opened, ("NTP", " (UDP)", [ntp_server])]
    for _, _, servers in opened:
        for server in servers:
            server.server_close()
    return None


def ntp_state_line(server: NtpServer) -> str:
    """What the NTP service tells clients about this clock, for the log."""
    state = server.state()
    if state.leap == ntp.LEAP_UNSYNCHRONISED:
        why = (
            "is unsynchronised"
            if kernelclock.AVAILABLE
            else "state cannot be read on this platform"
        )
        return (
            f"NTP: the kernel clock {why}; answering with leap indicator 3, which "
            "clients ignore (--local-stratum N serves this clock anyway)"
        )
    return f"NTP: answering as stratum {state.stratum}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the time server from the command line."""
    prog = program_name("timeservice.server")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Answer 'send time' with the current date and time over TCP; "
        "serve Daytime, Time and NTP too when asked.",
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
    for option, (name, usual, _) in STANDARD.items():
        parser.add_argument(
            f"--{option}",
            type=port_number,
            metavar="PORT",
            help=f"serve {name} on this port too, over TCP and UDP "
            f"(standard: {usual}; 0 for any free port)",
        )
    parser.add_argument(
        "--ntp",
        type=port_number,
        metavar="PORT",
        help="serve NTP (server mode) on this UDP port too (standard: 123)",
    )
    parser.add_argument(
        "--local-stratum",
        type=int,
        choices=range(1, 16),
        metavar="N",
        help="with --ntp: serve this clock at stratum N (1-15) even when the kernel "
        "says it is unsynchronised, as chrony's 'local stratum' does",
    )
    parser.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="answer every datagram (for benchmarks); by default each source "
        "gets 16 replies at once and 1 a second after that",
    )
    parser.add_argument(
        "--cpu",
        type=cpu_choice,
        default="auto",
        metavar="N|auto|off",
        help="keep the serving threads on one CPU, which is faster while only one "
        "thread runs Python at a time; 'auto' picks one when there are several "
        "CPUs and a GIL (default: %(default)s)",
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
    if args.local_stratum is not None and args.ntp is None:
        parser.error("--local-stratum goes with --ntp")
    cpus = capabilities.allowed_cpus()
    if isinstance(args.cpu, int) and cpus and args.cpu not in cpus:
        parser.error(f"--cpu {args.cpu}: this process may use CPUs {sorted(cpus)}")

    configure_logging(
        logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.quiet
        else logging.INFO
    )
    logger.debug("platform: %s", capabilities.describe())
    clock = utc_now if args.utc else local_now
    server = open_server(
        prog,
        args,
        max_line=args.max_line,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        clock=clock,
    )
    if server is None:
        return 1
    standard = open_standard(prog, args, clock)
    if standard is None:
        server.server_close()
        return 1
    service = Service([server, *(s for _, _, pair in standard for s in pair)])
    with stop_on_signals(service.stop), kept_on_cpu(choose_cpu(args.cpu)):
        announce(server)
        for name, how, (first, *_) in standard:
            announce(first, name, how)
            if isinstance(first, NtpServer):
                logger.info("%s", ntp_state_line(first))
        service.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
