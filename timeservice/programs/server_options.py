"""The server's command line: its options in groups, and the rules between
them in one function, check_arguments(), which tests call on its own."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..host import capabilities
from ..nts import ROTATE_SECONDS
from ..policy.sources import NETWORK_FACTOR, TABLE_BYTES
from ..servers.upstream import unvouched
from ..transport.registry import IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_HOST
from ..wire import ntp
from ..wire.line import COMMAND, DEFAULT_PORT, MAX_LINE_BYTES
from . import config
from .config import Declared, ReplacedList
from .opening import STANDARD
from .options import (
    Parser,
    add_address_arguments,
    cpu_choice,
    join_port,
    metrics_address,
    port_number,
    positive,
    seconds,
)
from .server_values import (
    byte_size,
    nts_server,
    reference_id,
    subnet,
    upstream_address,
)


def build_parser(prog: str, raising: bool = False) -> Parser:
    """The server's options, in groups: where it listens, its limits, the
    protocols and their clock, and running it as a daemon. With `raising`,
    a usage error is a UsageError (see Parser)."""
    parser = Parser(
        raising=raising,
        prog=prog,
        description="Answer 'send time' with the current date and time over TCP; "
        "serve Daytime, Time and NTP too when asked.",
        epilog=f"example: {prog} -b 0.0.0.0 {DEFAULT_PORT}",
    )
    listening = parser.add_argument_group("where it listens")
    add_address_arguments(listening, DEFAULT_PORT)
    limits = Declared(parser, "limits on every client")
    protocols = Declared(parser, "the standard protocols and NTP's clock")
    operating = Declared(parser, "running it as a daemon")
    limits(
        "--max-line",
        reload=True,
        type=positive(int),
        default=MAX_LINE_BYTES,
        metavar="BYTES",
        help="longest request line, line ending not counted (default: %(default)s)",
    )
    limits(
        "--idle-timeout",
        reload=True,
        type=seconds,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to send each request line (default: %(default)s)",
    )
    limits(
        "--max-connections",
        reload=True,
        type=positive(int),
        default=MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; more get 'ERR busy' (default: %(default)s)",
    )
    limits(
        "--max-per-host",
        reload=True,
        type=int,
        default=MAX_PER_HOST,
        metavar="N",
        help="connections one address may have open; more get 'ERR busy'; 0 for "
        "no such limit (default: %(default)s)",
    )
    limits(
        "--max-per-network",
        reload=True,
        type=int,
        default=NETWORK_FACTOR * MAX_PER_HOST,
        metavar="N",
        help="connections one IPv6 /64 may have open (one host may hold a whole "
        "one); 0 for no such limit (default: %(default)s)",
    )
    protocols(
        "--utc",
        reload=True,
        action="store_true",
        help="answer in UTC instead of local time",
    )
    for option, (name, usual, _) in STANDARD.items():
        protocols(
            f"--{option}",
            type=port_number,
            metavar="PORT",
            help=f"serve {name} on this port too, over TCP and UDP "
            f"(standard: {usual}; 0 for any free port)",
        )
    protocols(
        "--ntp",
        type=port_number,
        metavar="PORT",
        help="serve NTP (server mode) on this UDP port too (standard: 123; 0 for "
        "any free port)",
    )
    protocols(
        "--nts-ke",
        type=port_number,
        metavar="PORT",
        help="with --ntp: serve NTS Key Establishment (RFC 8915, TLS 1.3) on this "
        "TCP port, and answer NTS requests (standard: 4460; 0 for any free port; "
        "needs the nts extra: pip install 'timeservice[nts]')",
    )
    protocols(
        "--nts-cert",
        reload=True,
        metavar="FILE",
        help="with --nts-ke: the server's certificate (PEM; may hold its chain)",
    )
    protocols(
        "--nts-key",
        reload=True,
        metavar="FILE",
        help="with --nts-ke: the certificate's private key (PEM)",
    )
    protocols(
        "--nts-cookie-keys",
        reload=True,
        metavar="FILE",
        help="with --nts-ke: the secret the cookie keys are derived from, made "
        "(readable by its owner only) if missing, so that cookies outlive a "
        "restart; copy it to every host whose servers open each other's "
        "cookies; alone, with --ntp: answer NTS requests with cookies a KE "
        "server elsewhere sealed with this secret; read again on SIGHUP (default: "
        "$STATE_DIRECTORY/nts-cookie-keys under systemd, else in memory only)",
    )
    protocols(
        "--nts-rotate",
        type=seconds,
        default=ROTATE_SECONDS,
        metavar="SECONDS",
        help="with NTS: how often the cookie key changes; the 7 before it "
        "still open cookies; the same on every host that shares the secret "
        "(default: %(default)g, a day)",
    )
    protocols(
        "--nts-server",
        type=nts_server,
        metavar="HOST[:PORT]",
        help="with --nts-ke: send clients to this NTP server (RFC 8915's NTPv4 "
        "Server and Port Negotiation), which must hold the same cookie secret "
        "(default: this host, on --ntp's port)",
    )
    protocols(
        "--no-line",
        action="store_true",
        help="leave the line protocol out: serve only the protocols named "
        "(--daytime, --time, --ntp), such as NTP alone",
    )
    protocols(
        "--local-stratum",
        reload=True,
        type=int,
        choices=range(1, 16),
        metavar="N",
        help="with --ntp: serve this clock at stratum N (1-15) even when the kernel "
        "says it is unsynchronised, as chrony's 'local stratum' does",
    )
    protocols(
        "--upstream",
        type=upstream_address,
        default=("127.0.0.1", ntp.DEFAULT_PORT),
        metavar="HOST[:PORT]",
        help="with --ntp: the NTP server that synchronises this machine's clock "
        "(its daemon), asked what to claim while the kernel says synchronised; "
        "'none' not to ask (default: 127.0.0.1:123)",
    )
    protocols(
        "--upstream-stratum",
        reload=True,
        type=int,
        choices=range(0, ntp.MAX_STRATUM),
        metavar="N",
        help="with --ntp: the stratum of that server (0-14), for when it cannot "
        "be asked: this one then claims N+1",
    )
    protocols(
        "--upstream-id",
        reload=True,
        type=reference_id,
        metavar="ID",
        help="with --upstream-stratum: that server's reference ID, its IPv4 "
        "address or a reference clock's code (GPS, PPS)",
    )
    limits(
        "--no-rate-limit",
        reload=True,
        action="store_true",
        help="answer every datagram (for benchmarks); by default each source "
        "gets 16 replies at once and 1 a second after that, and 1 in 4 of what "
        "it sends beyond",
    )
    limits(
        "--kiss-of-death",
        reload=True,
        action="store_true",
        help="tell a source over its limit to slow down (a Kiss-o'-Death RATE, "
        "once a second at most), as chrony's 'kod'; off by default, since a "
        "forger can draw kisses onto the client whose address he sends from",
    )
    limits(
        "--source-table-size",
        type=byte_size,
        default=TABLE_BYTES,
        metavar="BYTES",
        help="memory each UDP server's table of sources may hold, as chrony's "
        "'clientloglimit'; when full, the source heard from least recently is "
        "forgotten (default: 16M)",
    )
    limits(
        "--allow",
        reload=True,
        action=ReplacedList,
        default=[],
        type=subnet,
        metavar="SUBNET",
        help="let clients in SUBNET ask (e.g. 192.0.2.0/24, 2001:db8::/32); "
        "alone, it denies everyone else; the most specific subnet wins",
    )
    limits(
        "--deny",
        reload=True,
        action=ReplacedList,
        default=[],
        type=subnet,
        metavar="SUBNET",
        help="refuse clients in SUBNET; by default everyone may ask",
    )
    operating(
        "--user",
        metavar="NAME",
        help="once every socket is bound, serve as this user, without root",
    )
    operating(
        "--group",
        metavar="NAME",
        help="with --user: serve in this group (default: the user's)",
    )
    operating(
        "--metrics",
        type=metrics_address,
        metavar="[ADDRESS:]PORT",
        help="serve Prometheus metrics over HTTP at /metrics "
        "(on 127.0.0.1 unless an address is given)",
    )
    operating(
        "--config",
        metavar="FILE",
        help="read the settings from FILE (TOML, one key for each long option: "
        'max_per_host = 64, allow = ["192.0.2.0/24"]); the command line\'s '
        "replace the file's; SIGHUP reads it again",
    )
    operating(
        "--check-config",
        action="store_true",
        help="check the file and the options together, say so, and exit (0 if "
        "they are good, 2 if not), as nginx -t does",
    )
    operating(
        "--ready-file",
        metavar="PATH",
        help="once every socket is bound, write there what is served, as JSON "
        "(the pid; each socket's protocol, transport, address and port), for a "
        "program that started the server on port 0",
    )
    operating(
        "--workers",
        type=positive(int),
        default=1,
        metavar="N",
        help="serve from N processes on the same sockets, to use more than one "
        "core; every limit holds per worker (default: %(default)s)",
    )
    operating(
        "--cpu",
        type=cpu_choice,
        default="auto",
        metavar="N|auto|off",
        help="keep the serving threads on one CPU, which is faster while only one "
        "thread runs Python at a time; 'auto' picks one when there are several "
        "CPUs and a GIL (default: %(default)s)",
    )
    verbosity = operating.group.add_mutually_exclusive_group()
    for action in (
        verbosity.add_argument(
            "-v", "--verbose", action="store_true", help="log every request"
        ),
        verbosity.add_argument(
            "-q", "--quiet", action="store_true", help="log only warnings and errors"
        ),
    ):
        parser.reloadable.add(action.dest)
    operating("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_arguments(
    prog: str, argv: Sequence[str] | None, raising: bool = False
) -> argparse.Namespace:
    """The server's command line over its configuration file, parsed and
    checked: a rule broken is a usage error (with `raising`, a UsageError,
    for a reload)."""
    parser = build_parser(prog, raising)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = config.parse(parser, argv, config.config_file(argv))
    except config.ConfigError as exc:
        parser.error(str(exc))
    args.bind, port = join_port(parser, args.bind, args.port)
    if args.no_line and port is not None:
        parser.error(f"--no-line leaves the line protocol out: no port for it ({port})")
    args.port = None if args.no_line else DEFAULT_PORT if port is None else port
    args.activated = "LISTEN_FDS" in os.environ  # the sockets come from systemd
    problem = check_arguments(args)
    if problem is not None:
        parser.error(problem)
    return args


STANDARD_OPTIONS = ("daytime", "time", "ntp")
WITH_NTP = ("local_stratum", "upstream_stratum", "nts_ke", "nts_cookie_keys")


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first rule between the options that `args` break, or None."""
    if args.max_line < len(COMMAND):
        return f"--max-line must leave room for {COMMAND!r}"
    for option in ("max_per_host", "max_per_network"):
        if getattr(args, option) < 0:
            return f"--{option.replace('_', '-')} must be 0 or more"
    if args.activated:
        given = [f"--{o}" for o in STANDARD_OPTIONS if getattr(args, o) is not None]
        given += ["--nts-ke"] if args.nts_ke is not None else []
        given += ["--no-line"] if args.no_line else []
        if given:
            return (
                f"{', '.join(given)}: the sockets come from systemd (LISTEN_FDS); "
                "name them in the .socket unit instead"
            )
    elif args.no_line and all(getattr(args, o) is None for o in STANDARD_OPTIONS):
        return "--no-line leaves nothing to serve: name --daytime, --time or --ntp"
    if args.nts_ke is not None and (args.nts_cert is None or args.nts_key is None):
        return "--nts-ke needs --nts-cert FILE and --nts-key FILE"
    # Under systemd, a socket named nts-ke asks for Key Establishment.
    for option in ("nts_cert", "nts_server"):
        if getattr(args, option) is not None and args.nts_ke is None:
            if not args.activated:
                return f"--{option.replace('_', '-')} goes with --nts-ke"
    if (args.nts_cert is None) != (args.nts_key is None):
        return "--nts-cert and --nts-key go together"
    if not args.activated and args.ntp is None:
        for option in WITH_NTP:
            if getattr(args, option) is not None:
                return f"--{option.replace('_', '-')} goes with --ntp"
    if args.upstream is not None and (args.ntp is not None or args.activated):
        problem = unvouched(args.upstream)
        if problem is not None:
            return f"--upstream {problem}"
    if args.upstream_id is not None and args.upstream_stratum is None:
        return "--upstream-id goes with --upstream-stratum"
    if args.group is not None and args.user is None:
        return "--group goes with --user"
    if args.workers > 1:
        if not hasattr(os, "fork"):
            return "--workers needs a system with fork()"
        if isinstance(args.cpu, int):
            return (
                "--cpu N keeps one process on one CPU; with --workers, use auto or off"
            )
    cpus = capabilities.allowed_cpus()
    if isinstance(args.cpu, int) and cpus and args.cpu not in cpus:
        return f"--cpu {args.cpu}: this process may use CPUs {sorted(cpus)}"
    return None
