"""The server program: servers in one process, started and stopped together.

Run it with ``python -m timeservice.server [-b ADDRESS] [PORT] [--daytime PORT]
[--time PORT] [--ntp PORT]``: the line protocol and each standard protocol
asked for, on the same address, under one set of signals and one shutdown.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from . import __version__, capabilities, kernelclock, ntp, prefork, systemd
from .access import NETWORK_FACTOR, AccessList, parse_subnet
from .cli import (
    Account,
    add_address_arguments,
    announce,
    become,
    cannot_listen,
    choose_cpu,
    configure_logging,
    cpu_choice,
    find_account,
    kept_on_cpu,
    listen,
    metrics_address,
    port_number,
    positive,
    program,
    program_name,
    running_as_root,
    seconds,
    split_host_port,
    stop_on_signals,
)
from .datagram import DatagramServer
from .protocol import COMMAND, DEFAULT_PORT, MAX_LINE_BYTES, local_now, utc_now
from .server import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_PER_HOST,
    OneShotServer,
    TimeServer,
    format_address,
)
from .standard import DaytimeHandler, NtpServer, TimeHandler

logger = logging.getLogger(__name__)


class ServerStopped(Exception):
    """A server's loop ended on its own; the message says which and why."""


def describe(server: socketserver.BaseServer) -> str:
    """A server as the log names it: its protocol, transport and address,
    as in ``ntp server (UDP, 127.0.0.1 port 123)``."""
    protocol = getattr(server.RequestHandlerClass, "protocol", "a")
    udp = getattr(server, "socket_type", None) == socket.SOCK_DGRAM
    where = format_address(server.server_address)  # type: ignore[arg-type]
    return f"{protocol} server ({'UDP' if udp else 'TCP'}, {where})"


class Service:
    """Several servers in one process, watched and stopped together.

    serve_forever() serves each server in a thread of its own; stop(), from
    any other thread, ends them all, and each server's server_close() then
    finishes its clients. A server whose loop ends on its own (an exception
    out of serve_forever(), or a shutdown() from elsewhere) ends the whole
    service too, and serve_forever() then raises ServerStopped: a service
    half serving is worse than one that stops and is restarted. watch()
    calls a function, such as systemd's watchdog, only while every server's
    loop still turns.
    """

    def __init__(self, servers: Sequence[socketserver.BaseServer]) -> None:
        if not servers:
            raise ValueError("a service needs a server")
        self.servers = list(servers)
        self._stopped = threading.Event()  # stop() was called
        self._ended = threading.Event()  # a server's loop has ended
        self._failure: str | None = None
        self._watcher: tuple[float, Callable[[], None]] | None = None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        threads = [
            threading.Thread(
                target=self._serve,
                args=(server, poll_interval),
                name=f"timeservice {describe(server)}",
            )
            for server in self.servers
        ]
        for thread in threads:
            thread.start()
        if self._watcher is not None:
            threads.append(threading.Thread(target=self._watch, daemon=True))
            threads[-1].start()
        try:
            self._ended.wait()
        finally:
            # Each shutdown() waits for its loop's next turn: all at once.
            stopping = [
                threading.Thread(target=server.shutdown) for server in self.servers
            ]
            for thread in stopping:
                thread.start()
            for thread in stopping + threads:
                thread.join()
            for server in self.servers:
                server.server_close()
        if self._failure is not None:
            raise ServerStopped(self._failure)

    def stop(self) -> None:
        """End serve_forever(); not from a thread that one of the servers runs."""
        self._stopped.set()
        self._ended.set()

    def watch(self, interval: float, beat: Callable[[], None]) -> None:
        """While serving, call `beat` every `interval` seconds, but only if every
        server's loop has turned since the last call (servers without a turn
        count are taken on trust). Call before serve_forever()."""
        self._watcher = (interval, beat)

    def _serve(self, server: socketserver.BaseServer, poll_interval: float) -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # any end but a stop ends the service
            self._fail(f"{describe(server)} stopped: {exc!r}")
        else:
            if not self._stopped.is_set():
                self._fail(f"{describe(server)} stopped serving")
        finally:
            self._ended.set()

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason

    def _watch(self) -> None:
        assert self._watcher is not None
        interval, beat = self._watcher
        last = [getattr(server, "turns", None) for server in self.servers]
        while not self._ended.wait(interval):
            now = [getattr(server, "turns", None) for server in self.servers]
            if all(
                turns is None or turns != before
                for turns, before in zip(now, last, strict=True)
            ):
                beat()
            last = now


# Daytime and Time: option, name in the start-up line, standard port, handler.
STANDARD = {
    "daytime": ("daytime", 13, DaytimeHandler),
    "time": ("time (RFC 868)", 37, TimeHandler),
}
INETD_PORTS = 1024  # Daytime and Time drop datagrams from lower source ports
POLL_INTERVAL = 0.5  # how often an idle server's loop turns
PORT_TRIES = 10  # port 0: tries to find a port free for both TCP and UDP

# What the start-up lines call each: the service's name, then its servers.
Opened = list[tuple[str, str, list[socketserver.BaseServer]]]


class Settings(NamedTuple):
    """The constructor keywords of each kind of server, from the arguments."""

    line: dict[str, Any]  # TimeServer
    one_shot: dict[str, Any]  # OneShotServer: Daytime and Time over TCP
    datagrams: dict[str, Any]  # DatagramServer and NtpServer
    ntp: dict[str, Any]  # NtpServer's own

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Settings:
        common: dict[str, Any] = {
            "clock": utc_now if args.utc else local_now,
            "access": (
                AccessList.from_options(args.allow, args.deny)
                if args.allow or args.deny
                else None
            ),
        }
        line = dict(
            common,
            max_line=args.max_line,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_per_host=args.max_per_host or None,
            max_per_network=args.max_per_network or None,
        )
        datagrams = dict(common, burst=None) if args.no_rate_limit else common
        claim = None
        if args.upstream_stratum is not None:
            claim = (args.upstream_stratum, args.upstream_id or ntp.NO_REFERENCE)
        ntp_settings = {
            "local_stratum": args.local_stratum,
            "upstream": args.upstream,
            "upstream_claim": claim,
        }
        return cls(line, common, datagrams, ntp_settings)


def open_pair(
    prog: str,
    host: str,
    port: int,
    handler: type[socketserver.BaseRequestHandler],
    settings: Settings,
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
            lambda address: OneShotServer(address, handler, **settings.one_shot),
        )
        if tcp is None:
            return None
        bound = tcp.server_address[1]
        try:
            udp = DatagramServer(
                (host, bound),
                handler,
                min_source_port=INETD_PORTS,
                **settings.datagrams,
            )
        except OSError as exc:
            tcp.server_close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            cannot_listen(prog, host, bound, exc)
            return None
        return [tcp, udp]
    print(f"{prog}: no port free for both TCP and UDP on {host}", file=sys.stderr)
    return None


def bind_hosts(host: str) -> list[str]:
    """Every address a name to listen on resolves to, once each, in the
    order given: ``localhost`` may be ::1 and 127.0.0.1, and a client tries
    each of them, so each is served. An address is itself; "" is every
    IPv4 interface, as for socketserver."""
    found = socket.getaddrinfo(
        host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return list(dict.fromkeys(str(address[0]) for *_, address in found))


def open_bound(
    prog: str, args: argparse.Namespace, settings: Settings
) -> Opened | None:
    """Bind every server the arguments ask for, on each address the name to
    listen on resolves to, or None if one cannot listen (those already open
    are closed again). The first address's ports are the others' too, so
    that port 0 picks one port for the name."""
    try:
        hosts = bind_hosts(args.bind)
    except (OSError, UnicodeError) as exc:
        cannot_listen(prog, args.bind, args.port, exc)
        return None
    ports = {option: getattr(args, option) for option in ("port", *STANDARD, "ntp")}
    opened: Opened = []
    for host in hosts:
        more = open_on(prog, host, ports, settings)
        if more is None:
            close_all(opened)
            return None
        for option, entry in more:
            opened.append(entry)
            ports[option] = cast(tuple, entry[2][0].server_address)[1]
    return opened


def open_on(
    prog: str, host: str, ports: dict[str, int | None], settings: Settings
) -> list[tuple[str, tuple[str, str, list[socketserver.BaseServer]]]] | None:
    """The servers `ports` asks for on one address (None: not that one),
    each with its option; or None, with those opened closed again."""
    line = listen(
        prog,
        host,
        ports["port"] or 0,
        lambda address: TimeServer(address, **settings.line),
    )
    if line is None:
        return None
    opened: list = [("port", ("time", "", [line]))]
    for option, (name, _, handler) in STANDARD.items():
        port = ports[option]
        if port is None:
            continue
        pair = open_pair(prog, host, port, handler, settings)
        if pair is None:
            break
        opened.append((option, (name, " (TCP, UDP)", pair)))
    else:
        port = ports["ntp"]
        if port is None:
            return opened
        ntp_server = listen(
            prog,
            host,
            port,
            lambda address: NtpServer(address, **settings.ntp, **settings.datagrams),
        )
        if ntp_server is not None:
            return [*opened, ("ntp", ("NTP", " (UDP)", [ntp_server]))]
    close_all([entry for _, entry in opened])
    return None


# Socket activation: the names a .socket unit gives its sockets
# (FileDescriptorName=), and the socket types each protocol is served over.
ACTIVATED = {
    "line": (socket.SOCK_STREAM,),
    "daytime": (socket.SOCK_STREAM, socket.SOCK_DGRAM),
    "time": (socket.SOCK_STREAM, socket.SOCK_DGRAM),
    "ntp": (socket.SOCK_DGRAM,),
}
TRANSPORTS = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}


def open_inherited(
    sockets: list[tuple[str, socket.socket]], settings: Settings
) -> Opened:
    """A server on each socket systemd passed, as its name says; ActivationError
    if a name or a socket does not fit."""
    for number, (name, sock) in enumerate(sockets, systemd.FIRST_DESCRIPTOR):
        if name not in ACTIVATED:
            raise systemd.ActivationError(
                f"socket {number} is named {name!r}; the names are "
                f"{', '.join(ACTIVATED)} (FileDescriptorName=)"
            )
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise systemd.ActivationError(
                f"socket {number} ({name}) is not an IPv4 or IPv6 socket"
            )
        if sock.type not in ACTIVATED[name] or not (
            sock.type != socket.SOCK_STREAM or systemd.is_listening(sock)
        ):
            kinds = " or ".join(TRANSPORTS[kind] for kind in ACTIVATED[name])
            raise systemd.ActivationError(
                f"socket {number} ({name}) must be a listening {kinds} socket"
            )
    opened: Opened = []
    for name, sock in sockets:
        how = f" ({TRANSPORTS[sock.type]}, from systemd)"
        server: socketserver.BaseServer
        if name == "line":
            server = TimeServer.on_socket(sock, **settings.line)
            opened.append(("time", how, [server]))
            continue
        if name == "ntp":
            server = NtpServer.on_socket(sock, **settings.ntp, **settings.datagrams)
            opened.append(("NTP", how, [server]))
            continue
        title, _, handler = STANDARD[name]
        if sock.type == socket.SOCK_STREAM:
            server = OneShotServer.on_socket(sock, handler, **settings.one_shot)
        else:
            server = DatagramServer.on_socket(
                sock, handler, min_source_port=INETD_PORTS, **settings.datagrams
            )
        opened.append((title, how, [server]))
    return opened


def close_all(opened: Opened) -> None:
    for _, _, servers in opened:
        for server in servers:
            server.server_close()


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
    if state.reference_id == ntp.NO_REFERENCE and state.stratum == ntp.UNKNOWN_STRATUM:
        asked = (
            ""
            if server.upstream is None
            else (f" until {format_address(server.upstream)} says what it claims")
        )
        return (
            "NTP: the kernel clock is synchronised from a server not known; "
            f"answering as stratum {state.stratum}, no reference ID{asked} "
            "(--upstream-stratum N says what it is)"
        )
    return f"NTP: answering as stratum {state.stratum}"


def upstream_address(text: str) -> tuple | None:
    """An argparse type for --upstream: ``HOST[:PORT]`` resolved to an
    address (an IPv6 one in brackets), or ``none``."""
    if text == "none":
        return None
    try:
        host, port = split_host_port(text)
        family, _, _, _, address = socket.getaddrinfo(
            host, port or ntp.DEFAULT_PORT, type=socket.SOCK_DGRAM
        )[0]
    except (ValueError, OSError, UnicodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return address


def reference_id(text: str) -> bytes:
    """An argparse type for --upstream-id: see ntp.reference_id()."""
    try:
        return ntp.reference_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subnet(text: str) -> str:
    """An argparse type for --allow and --deny: checked here, parsed later."""
    try:
        parse_subnet(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_arguments(prog: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The server's command line, checked."""
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
        type=seconds,
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
        "--max-per-host",
        type=int,
        default=MAX_PER_HOST,
        metavar="N",
        help="connections one address may have open; more get 'ERR busy'; 0 for "
        "no such limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-per-network",
        type=int,
        default=NETWORK_FACTOR * MAX_PER_HOST,
        metavar="N",
        help="connections one IPv6 /64 may have open (one host may hold a whole "
        "one); 0 for no such limit (default: %(default)s)",
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
        "--upstream",
        type=upstream_address,
        default=("127.0.0.1", ntp.DEFAULT_PORT),
        metavar="HOST[:PORT]",
        help="with --ntp: the NTP server that synchronises this machine's clock "
        "(its daemon), asked what to claim while the kernel says synchronised; "
        "'none' not to ask (default: 127.0.0.1:123)",
    )
    parser.add_argument(
        "--upstream-stratum",
        type=int,
        choices=range(0, ntp.MAX_STRATUM),
        metavar="N",
        help="with --ntp: the stratum of that server (0-14), for when it cannot "
        "be asked: this one then claims N+1",
    )
    parser.add_argument(
        "--upstream-id",
        type=reference_id,
        metavar="ID",
        help="with --upstream-stratum: that server's reference ID, its IPv4 "
        "address or a reference clock's code (GPS, PPS)",
    )
    parser.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="answer every datagram (for benchmarks); by default each source "
        "gets 16 replies at once and 1 a second after that",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        type=subnet,
        metavar="SUBNET",
        help="let clients in SUBNET ask (e.g. 192.0.2.0/24, 2001:db8::/32); "
        "alone, it denies everyone else; the most specific subnet wins",
    )
    parser.add_argument(
        "--deny",
        action="append",
        default=[],
        type=subnet,
        metavar="SUBNET",
        help="refuse clients in SUBNET; by default everyone may ask",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="once every socket is bound, serve as this user, without root",
    )
    parser.add_argument(
        "--group",
        metavar="NAME",
        help="with --user: serve in this group (default: the user's)",
    )
    parser.add_argument(
        "--metrics",
        type=metrics_address,
        metavar="[ADDRESS:]PORT",
        help="serve Prometheus metrics over HTTP at /metrics "
        "(on 127.0.0.1 unless an address is given)",
    )
    parser.add_argument(
        "--workers",
        type=positive(int),
        default=1,
        metavar="N",
        help="serve from N processes on the same sockets, to use more than one "
        "core; every limit holds per worker (default: %(default)s)",
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
    for option in ("max_per_host", "max_per_network"):
        if getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')} must be 0 or more")
    args.activated = "LISTEN_FDS" in os.environ
    if args.activated:
        given = [f"--{o}" for o in ("daytime", "time", "ntp") if getattr(args, o)]
        if given:
            parser.error(
                f"{', '.join(given)}: the sockets come from systemd (LISTEN_FDS); "
                "name them in the .socket unit instead"
            )
    elif args.ntp is None:
        for option in ("local_stratum", "upstream_stratum"):
            if getattr(args, option) is not None:
                parser.error(f"--{option.replace('_', '-')} goes with --ntp")
    if args.upstream_id is not None and args.upstream_stratum is None:
        parser.error("--upstream-id goes with --upstream-stratum")
    if args.group is not None and args.user is None:
        parser.error("--group goes with --user")
    if args.workers > 1:
        if not hasattr(os, "fork"):
            parser.error("--workers needs a system with fork()")
        if isinstance(args.cpu, int):
            parser.error(
                "--cpu N keeps one process on one CPU; with --workers, use auto or off"
            )
        if args.metrics is not None:
            parser.error("--metrics reports one process; not with --workers yet")
    cpus = capabilities.allowed_cpus()
    if isinstance(args.cpu, int) and cpus and args.cpu not in cpus:
        parser.error(f"--cpu {args.cpu}: this process may use CPUs {sorted(cpus)}")
    return args


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run the time server from the command line."""
    prog = program_name("timeservice.server")
    args = parse_arguments(prog, argv)
    try:
        account = None if args.user is None else find_account(args.user, args.group)
        inherited = systemd.inherited_sockets()
    except (LookupError, systemd.ActivationError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    configure_logging(
        logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.quiet
        else logging.INFO
    )
    logger.debug("platform: %s", capabilities.describe())
    settings = Settings.from_arguments(args)
    if inherited is None:
        opened = open_bound(prog, args, settings)
        if opened is None:
            return 1
    else:
        try:
            opened = open_inherited(inherited, settings)
        except systemd.ActivationError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
    servers = [server for _, _, group in opened for server in group]
    if args.metrics is not None:
        from .metrics import MetricsServer  # http.server: only when asked for

        host, port = args.metrics
        metrics = listen(
            prog,
            host,
            port,
            lambda a: MetricsServer(a, servers, access=settings.line["access"]),
        )
        if metrics is None:
            close_all(opened)
            return 1
        opened.append(("metrics", " (HTTP, /metrics)", [metrics]))
    notifier = systemd.Notifier()
    if account is not None:
        become(account)
    elif running_as_root():
        logger.warning(
            "serving as root; --user NAME serves as NAME once the ports are bound"
        )
    servers = [server for _, _, group in opened for server in group]

    def ready(how: str = "") -> None:
        """Say so once the signals are handled: a stop from now on is clean."""
        for name, where, (first, *_) in opened:
            announce(first, name, where)
            if isinstance(first, NtpServer):
                logger.info("%s", ntp_state_line(first))
        if account is not None:
            print(f"Serving as user {account.user}, group {account.group}.", flush=True)
        if how:
            print(how, flush=True)
        notifier.notify("READY=1", f"STATUS={status_line(opened, account)}")

    def stopping() -> None:
        notifier.notify("STOPPING=1", "STATUS=Shutting down")

    try:
        if args.workers > 1:
            return serve_in_workers(servers, args, stopping, ready, notifier)
        service = Service(servers)

        def stop() -> None:
            stopping()
            service.stop()

        with stop_on_signals(stop), kept_on_cpu(choose_cpu(args.cpu)):
            ready()
            return serve(service, notifier)
    finally:
        notifier.close()


def serve(service: Service, notifier: systemd.Notifier) -> int:
    """Serve until stopped (0) or until a server's loop ends on its own (1,
    after one line in the log). Under systemd's watchdog, WATCHDOG=1 goes
    out every half of its timeout while every server's loop still turns."""
    poll_interval = POLL_INTERVAL
    if notifier.watchdog is not None:
        interval = notifier.watchdog / 2
        poll_interval = min(poll_interval, interval / 4)  # idle loops turn too
        service.watch(interval, lambda: notifier.notify("WATCHDOG=1"))
    try:
        service.serve_forever(poll_interval)
    except ServerStopped as exc:
        logger.error("%s; ending the service", exc)
        return 1
    return 0


def serve_in_workers(
    servers: list[socketserver.BaseServer],
    args: argparse.Namespace,
    stopping: Callable[[], None],
    ready: Callable[[str], None],
    notifier: systemd.Notifier,
) -> int:
    """Serve the bound sockets from `args.workers` processes, each on a CPU
    of its own where --cpu allows; the limits hold in each worker. A worker
    whose server stops ends with status 1, and the supervisor starts
    another; each worker keeps systemd's watchdog (NotifyAccess=all)."""
    for server in servers:
        # Every worker waits on every socket; those that lose the race for
        # a connection or a datagram go back to waiting instead of blocking.
        server.socket.setblocking(False)  # type: ignore[attr-defined]
    cpus = worker_cpus(args.cpu, args.workers)

    def work(number: int) -> int:
        service = Service(servers)
        with stop_on_signals(service.stop), kept_on_cpu(cpus[number]):
            return serve(service, notifier)

    supervisor = prefork.Supervisor(args.workers, work)
    supervisor.on_stop = stopping
    try:
        return supervisor.serve(
            lambda: ready(f"Serving from {args.workers} worker processes.")
        )
    finally:
        for server in servers:
            server.server_close()


def worker_cpus(choice: str | int, count: int) -> list[int | None]:
    """The CPU of each worker: with ``auto``, one each in turn where there
    are several CPUs and a GIL; with ``off``, none."""
    if choose_cpu(choice) is None:  # off, or nothing to gain from keeping
        return [None] * count
    cpus = sorted(capabilities.allowed_cpus())
    return [cpus[number % len(cpus)] for number in range(count)]


def status_line(opened: Opened, account: Account | None) -> str:
    """What systemctl status shows: the services and where they listen."""
    parts = []
    for name, _, servers in opened:
        where = format_address(servers[0].server_address)  # type: ignore[arg-type]
        parts.append(f"{name} on {where}")
    user = "" if account is None else f", as {account.user}"
    return f"Serving {'; '.join(parts)}{user}"


if __name__ == "__main__":
    sys.exit(main())
