"""The server program: the servers the command line asks for, in one
process or several, started, announced and stopped together.

Run it with ``python -m timeservice.server [-b ADDRESS] [PORT] [--daytime
PORT] [--time PORT] [--ntp PORT]``: the line protocol and each standard
protocol asked for, on the same address, under one set of signals and one
shutdown.
"""

from __future__ import annotations

import argparse
import logging
import socketserver
import sys
from collections.abc import Sequence
from typing import Any

from ..clock import claims, kernel
from ..host import capabilities
from ..operations import systemd
from ..operations.cpu import choose_cpu, kept_on_cpu
from ..operations.gathering import Gathered, GatheredServer
from ..operations.privileges import (
    Account,
    become,
    find_account,
    look_up,
    running_as_root,
)
from ..operations.service import Service, serve, stop_on_signals
from ..policy.logs import format_address
from ..servers.ntp import NtpServer
from ..wire import ntp
from . import nts_serving, starting
from .opening import (
    Opened,
    Settings,
    close_all,
    open_bound,
    open_inherited,
    warn_unmatched,
)
from .options import (
    OutputFailed,
    announce,
    configure_logging,
    listen,
    program,
    program_name,
    say,
)
from .readiness import check_writable, write_ready_file
from .reloading import Reloader, log_level
from .server_options import parse_arguments
from .workers import Workers, serve_in_workers

logger = logging.getLogger(__name__)


def ntp_state_line(server: NtpServer) -> str:
    """What the NTP service tells clients about this clock, for the log."""
    state = server.state()
    if state.leap == ntp.LEAP_UNSYNCHRONISED:
        why = (
            "is unsynchronised"
            if kernel.AVAILABLE
            else "state cannot be read on this platform"
        )
        return (
            f"NTP: the kernel clock {why}; answering with leap indicator 3, which "
            "clients ignore (--local-stratum N serves this clock anyway)"
        )
    if (
        state.reference_id == ntp.NO_REFERENCE
        and state.stratum == claims.UNKNOWN_STRATUM
    ):
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


@program("timeservice.server", holds=starting.SERVED)
def main(argv: Sequence[str] | None = None) -> int:
    """Run the time server from the command line."""
    prog = program_name("timeservice.server")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_arguments(prog, argv)
    if args.check_config:
        return check_config(prog, args)
    try:
        account = None if args.user is None else find_account(args.user, args.group)
        inherited = systemd.inherited_sockets()
        if args.ready_file is not None:
            check_writable(args.ready_file)
    except (LookupError, systemd.ActivationError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"{prog}: cannot write {args.ready_file}: {exc.strerror}", file=sys.stderr
        )
        return 1
    configure_logging(log_level(args))
    logger.debug("platform: %s", capabilities.describe())
    if args.config_path is not None and not args.config_found:
        logger.info("no %s: the defaults and the command line", args.config_path)
    settings = Settings.from_arguments(args)
    nts = None
    if nts_serving.serves_nts(args):
        nts = nts_serving.prepare(prog, args)
        if nts is None:
            return 1
        from ..servers.nts import NtsResponder

        settings.ntp["nts"] = NtsResponder(nts[1])
    if inherited is None:
        opened = open_bound(prog, args, settings)
        if opened is None:
            return 1
        if (
            nts is not None
            and args.nts_ke is not None
            and not nts_serving.open_key_establishment(
                prog, args, *nts, opened, settings.line["access"]
            )
        ):
            close_all(opened)
            return 1
    else:
        try:
            key_establishment = None
            if nts is not None:
                key_establishment = nts_serving.inherited_key_establishment(
                    args, *nts, settings.line["access"]
                )
            opened = open_inherited(inherited, settings, key_establishment)
        except systemd.ActivationError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
    warn_unmatched(settings.line["access"], opened)
    servers = [server for _, _, group in opened for server in group]
    gathered = None  # with workers, their counts, for the metrics
    metrics = None
    if args.metrics is not None:
        from ..operations.metrics import MetricsServer  # http.server: when asked

        counted: list[Any] = servers
        if args.workers > 1:
            gathered = Gathered(len(servers))
            counted = [GatheredServer(s, n, gathered) for n, s in enumerate(servers)]
        host, port = args.metrics
        metrics = listen(
            prog,
            host,
            port,
            lambda a: MetricsServer(
                a,
                counted,
                clock_state=next(
                    (s.state for s in servers if isinstance(s, NtpServer)), None
                ),
                worker_threads=None if gathered is None else gathered.threads,
                access=settings.line["access"],
            ),
        )
        if metrics is None:
            close_all(opened)
            return 1
        opened.append(("metrics", " (HTTP, /metrics)", [metrics]))
    notifier = systemd.Notifier()
    if account is not None:
        nts_serving.hand_over(args, account.uid, account.gid)
        become(account)
    elif running_as_root():
        logger.warning(
            "serving as root; --user NAME serves as NAME once the ports are bound"
        )
    servers = [server for _, _, group in opened for server in group]

    def ready(how: str = "") -> None:
        """Say so once the signals are handled: a stop from now on is clean."""
        if args.ready_file is not None:  # first: the lines below say it is there
            try:
                write_ready_file(args.ready_file, servers)
            except OSError as exc:
                raise OutputFailed(f"{args.ready_file}: {exc.strerror}") from None
        for name, where, (first, *_) in opened:
            announce(first, name, where)
            if isinstance(first, NtpServer):
                logger.info("%s", ntp_state_line(first))
        if account is not None:
            say(f"Serving as user {account.user}, group {account.group}.")
        if how:
            say(how)
        notifier.notify("READY=1", f"STATUS={status_line(opened, account)}")
        starting.deliver()  # a SIGTERM or SIGHUP that came while it started

    def stopping() -> None:
        notifier.notify("STOPPING=1", "STATUS=Shutting down")

    def reloader(of: list[socketserver.BaseServer], quiet: bool = False) -> Reloader:
        return Reloader(
            prog,
            argv,
            args,
            of,
            (lambda *fields: None) if quiet else notifier.notify,  # main PID only
            None if nts is None else (nts_serving.read_material, nts[1]),
            quiet,
        )

    try:
        if args.workers > 1:
            served = [server for server in servers if server is not metrics]
            workers = Workers(served, metrics, gathered, reloader)
            return serve_in_workers(workers, args, stopping, ready, notifier)
        service = Service(servers)
        service.on_stop = stopping
        service.on_reload = reloader(servers).reload
        with stop_on_signals(service.stop, service.reload) as received:
            with kept_on_cpu(choose_cpu(args.cpu)):
                ready()
                if notifier.watchdog is None:
                    status = serve(service)
                else:
                    status = serve(service, notifier.watched, notifier.watchdog / 2)
        return starting.status_after(status, received.stop)
    finally:
        notifier.close()


def check_config(prog: str, args: argparse.Namespace) -> int:
    """--check-config: the options and the file are good (as parsing them
    said), and so are the user and group it would serve as, and NTS's
    certificate and key where it is served."""
    try:
        if args.user is not None:
            look_up(args.user, args.group)
    except LookupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if nts_serving.serves_nts(args) and nts_serving.prepare(prog, args) is None:
        return 2
    where = args.config_path if args.config_found else "the command line"
    say(f"{prog}: {where}: the configuration is good")
    return 0


def status_line(opened: Opened, account: Account | None) -> str:
    """What systemctl status shows: the services and where they listen."""
    parts = []
    for name, _, servers in opened:
        where = format_address(servers[0].server_address)  # type: ignore[arg-type]
        parts.append(f"{name} on {where}")
    user = "" if account is None else f", as {account.user}"
    return f"Serving {'; '.join(parts)}{user}"
