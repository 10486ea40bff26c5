"""The skew check as a program that serves (--serve): its options, the
settings its server takes from them, and serving until a stop, reading its
configuration file again on SIGHUP (see programs.exporter for the server)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from ..clients.targets import Asking
from . import config, starting
from .config import ReplacedList
from .options import (
    Parser,
    UsageError,
    announce,
    configure_logging,
    listen,
    metrics_address,
    positive,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: Parser) -> None:
    """--serve and what goes with it."""
    from .exporter import DEFAULT_TARGETS, TargetRules
    from .server_values import subnet

    group = parser.add_argument_group("as a Prometheus exporter")
    group.add_argument(
        "--serve",
        type=metrics_address,
        metavar="[ADDRESS:]PORT",
        help="serve /probe?target=T, /skew?target=A&target=B and /metrics over "
        "HTTP for Prometheus, instead of checking once (loopback unless an "
        "address is given); each probe asks once",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="read the exporter's settings from this TOML file, one key for "
        'each long option (allow_target = ["10.0.0.0/8"]); SIGHUP reads it '
        "again; the command line replaces its values",
    )
    group.add_argument(
        "--allow-target",
        action=ReplacedList,
        type=TargetRules.check,
        default=[],
        metavar="SUBNET|NAME",
        help="a target it may probe: a subnet, a host name, or .example.com "
        f"for the names under it; repeatable (default: {', '.join(DEFAULT_TARGETS)})",
    )
    group.add_argument(
        "--allow",
        action=ReplacedList,
        type=subnet,
        default=[],
        metavar="SUBNET",
        help="who may scrape it (as the server's --allow); repeatable",
    )
    group.add_argument(
        "--deny",
        action=ReplacedList,
        type=subnet,
        default=[],
        metavar="SUBNET",
        help="who may not; repeatable",
    )
    group.add_argument(
        "--max-probes",
        type=positive(int),
        default=16,
        metavar="N",
        help="probes at once, across every scrape (default: %(default)s)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log every probe")


RESTART = ("serve", "max_probes")  # what a reload cannot change: new sockets, slots


def exporter_settings(args: argparse.Namespace) -> dict:
    """What the exporter's server takes from the options, a reload too."""
    from ..policy.access import AccessList
    from .exporter import DEFAULT_TARGETS, TargetRules

    return {
        "rules": TargetRules(args.allow_target or DEFAULT_TARGETS),
        "asking": Asking(1, args.timeout, True, args.max_distance, args.ca),
        "warning": args.warning,
        "critical": args.critical,
        "tolerance": args.tolerance,
        "ignore_unreachable": args.ignore_unreachable,
        "access": AccessList.of_options(args.allow, args.deny),
    }


def serve(
    prog: str,
    argv: Sequence[str],
    args: argparse.Namespace,
    parser: Callable[[], Parser],
) -> int:
    """Serve the exporter until SIGTERM or Ctrl-C; SIGHUP reads its
    configuration file again."""
    from ..clients.probing import Prober
    from ..operations.service import Service, serve, stop_on_signals
    from .exporter import ExporterServer

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    settings = exporter_settings(args)
    host, port = args.serve
    server = listen(
        prog,
        host,
        port,
        lambda address: ExporterServer(
            address, Prober(settings.pop("asking"), args.max_probes), **settings
        ),
    )
    if server is None:
        return 1
    in_force = args

    def reload() -> None:
        nonlocal in_force
        try:
            new = config.parse(
                parser(), argv, config.config_file(argv), environment=None
            )
        except (UsageError, config.ConfigError) as exc:
            logger.warning("reload failed; the configuration in force stays: %s", exc)
            return
        restart = [n for n in RESTART if getattr(new, n) != getattr(in_force, n)]
        if restart:
            logger.warning(
                "reload: %s cannot change while serving; restart to change it",
                ", ".join("--" + name.replace("_", "-") for name in restart),
            )
        server.apply(**exporter_settings(new))
        logging.getLogger().setLevel(logging.DEBUG if new.verbose else logging.INFO)
        in_force = new
        where = new.config_path if new.config_found else "the command line"
        logger.info("SIGHUP received; reloaded %s", where)

    service = Service([server])
    service.on_reload = reload
    with stop_on_signals(service.stop, service.reload) as received:
        announce(server, "the exporter", " (HTTP: /probe, /skew, /metrics)")
        starting.deliver()  # a SIGTERM or SIGHUP that came while it started
        status = serve(service)
    return starting.status_after(status, received.stop)
