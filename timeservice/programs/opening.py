"""Opening the servers the server's command line asks for: bound on each
address of a name, or on the sockets systemd passed; one clear line for
what cannot listen, and those already open closed again."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import socketserver
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from ..clock.system import local_clock, utc_clock
from ..operations import systemd
from ..policy import sources
from ..policy.access import AccessList
from ..servers.line import TimeServer
from ..servers.ntp import NtpServer
from ..servers.oneshot import DaytimeHandler, OneShotServer, TimeHandler
from ..transport.datagram import DatagramServer
from ..wire import ntp
from .options import cannot_listen, listen

logger = logging.getLogger(__name__)

# Daytime and Time: option, name in the start-up line, standard port, handler.
STANDARD = {
    "daytime": ("daytime", 13, DaytimeHandler),
    "time": ("time (RFC 868)", 37, TimeHandler),
}


INETD_PORTS = 1024  # Daytime and Time drop datagrams from lower source ports


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
        """The settings the command line's arguments give."""
        common: dict[str, Any] = {
            "clock": utc_clock if args.utc else local_clock,
            "access": AccessList.of_options(args.allow, args.deny),
        }
        line = dict(
            common,
            max_line=args.max_line,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_per_host=args.max_per_host or None,
            max_per_network=args.max_per_network or None,
        )
        datagrams = dict(
            common,
            burst=None if args.no_rate_limit else sources.BURST,
            kiss=args.kiss_of_death,
            table_bytes=args.source_table_size,
        )
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
    opened: list = []
    if ports["port"] is not None:  # None: --no-line
        line = listen(
            prog,
            host,
            ports["port"],
            lambda address: TimeServer(address, **settings.line),
        )
        if line is None:
            return None
        opened.append(("port", ("time", "", [line])))
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
    "nts-ke": (socket.SOCK_STREAM,),
}


TRANSPORTS = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}


def open_inherited(
    sockets: list[tuple[str, socket.socket]],
    settings: Settings,
    key_establishment: Callable[[socket.socket, int], Any] | None = None,
) -> Opened:
    """A server on each socket systemd passed, as its name says; ActivationError
    if a name or a socket does not fit. An nts-ke socket is served by
    `key_establishment(sock, ntp_port)`, where NTS is set up."""
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
        if name == "nts-ke" and key_establishment is None:
            raise systemd.ActivationError(
                f"socket {number} ({name}): Key Establishment needs "
                "--nts-cert FILE and --nts-key FILE"
            )
    opened: Opened = []
    for name, sock in sockets:
        how = f" ({TRANSPORTS[sock.type]}, from systemd)"
        server: socketserver.BaseServer
        if name == "nts-ke":
            continue  # once the NTP port is known
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
    ntp_ports = [
        cast(tuple, g[0].server_address)[1] for n, _, g in opened if n == "NTP"
    ]
    for name, sock in sockets:
        if name == "nts-ke" and key_establishment is not None:
            server = key_establishment(sock, (*ntp_ports, ntp.DEFAULT_PORT)[0])
            opened.append(("NTS-KE", " (TCP, TLS 1.3, from systemd)", [server]))
    return opened


def heard_versions(server: socketserver.BaseServer) -> set[int]:
    """The IP versions of the clients a server's socket hears: both on a
    dual-stack IPv6 wildcard, IPv4 on an IPv4-mapped address."""
    sock: socket.socket = server.socket  # type: ignore[attr-defined]
    if sock.family == socket.AF_INET:
        return {4}
    host = sock.getsockname()[0]
    if host.startswith("::ffff:"):
        return {4}
    try:
        dual = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        dual = False
    return {4, 6} if dual and host == "::" else {6}


def warn_unmatched(access: AccessList | None, opened: Opened) -> None:
    """One warning line for each rule no client of these sockets can match:
    shared configurations carry rules for both families."""
    if access is None:
        return
    heard: set[int] = set()
    for _, _, servers in opened:
        for server in servers:
            heard |= heard_versions(server)
    for network, allowed in access.unmatched(heard):
        option = "--allow" if allowed else "--deny"
        only = "IPv4" if heard == {4} else "IPv6"
        logger.warning(
            "%s %s can match no client: every socket here hears %s only",
            option,
            network,
            only,
        )


def close_all(opened: Opened) -> None:
    """Close every socket opened, whatever the servers made of them."""
    for _, _, servers in opened:
        for server in servers:
            server.server_close()
