"""Reloading the server's configuration on SIGHUP: the file read again (as
the service's user), checked by the same declarations as at start-up, and
what may change while serving changed on every server, so that new
connections and datagrams get the new rules; what needs new sockets is
named in one log line as needing a restart. A file that fails leaves the
configuration in force, with one log line. systemd hears RELOADING=1, then
READY=1."""

from __future__ import annotations

import argparse
import logging
import socketserver
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..nts import TlsError
from ..servers.line import TimeServer
from ..servers.ntp import NtpServer
from ..servers.oneshot import OneShotServer
from ..transport.datagram import DatagramServer
from ..transport.settings import known_settings
from .opening import Settings
from .options import UsageError
from .server_options import build_parser, parse_arguments

logger = logging.getLogger(__name__)

# What parsing adds beside the options, which no reload compares.
BOOKKEEPING = {
    "config_path",
    "config_found",
    "activated",
    "given_in_file",
    "lists_from_command_line",
    "check_config",
}


def log_level(args: argparse.Namespace) -> int:
    """The log level the options ask for."""
    if args.verbose:
        return logging.DEBUG
    return logging.WARNING if args.quiet else logging.INFO


def settings_for(server: socketserver.BaseServer, settings: Settings) -> dict[str, Any]:
    """The settings of `settings` that `server`'s kind takes."""
    if isinstance(server, TimeServer):
        wanted = settings.line
    elif isinstance(server, NtpServer):
        wanted = {**settings.datagrams, **settings.ntp}
    elif isinstance(server, DatagramServer):
        wanted = settings.datagrams
    elif isinstance(server, OneShotServer):
        wanted = settings.one_shot
    else:  # NTS-KE, the metrics: the access list
        wanted = {"access": settings.line["access"]}
    known = known_settings(server)
    return {name: value for name, value in wanted.items() if name in known}


class Reloader:
    """Reloads one process's servers: `args` as they are in force, `argv`
    the command line to read over the file again."""

    def __init__(
        self,
        prog: str,
        argv: Sequence[str],
        args: argparse.Namespace,
        servers: Sequence[socketserver.BaseServer],
        notify: Callable[..., None] = lambda *fields: None,
        nts: tuple[Callable[[argparse.Namespace], tuple[Any, Any]], Any] | None = None,
        quiet: bool = False,
    ) -> None:
        self.prog, self.argv, self.args = prog, list(argv), args
        self.servers = list(servers)
        self.notify = notify
        # NTS's files read again (nts_serving.read_material) and the cookie
        # keys every NTS server of this process shares, replaced in place.
        self.nts = nts
        self.quiet = quiet  # a worker: its parent says it
        self.reloadable = build_parser(prog).reloadable

    def reload(self) -> bool:
        """Read the configuration again and apply what may change; False,
        with one log line, if it cannot be used."""
        monotonic = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic}")
        try:
            new = parse_arguments(self.prog, self.argv, raising=True)
            context, keys = self.nts_material(new)
        except (UsageError, OSError, ValueError, TlsError) as exc:
            logger.warning("reload failed; the configuration in force stays: %s", exc)
            self.notify("READY=1")
            return False
        old = self.args
        names = (set(vars(new)) | set(vars(old))) - BOOKKEEPING
        changed = {n for n in names if getattr(new, n, None) != getattr(old, n, None)}
        restart = sorted(changed - self.reloadable)
        merged = argparse.Namespace(**vars(old))
        for name in changed & self.reloadable:
            setattr(merged, name, getattr(new, name))
        settings = Settings.from_arguments(merged)
        for server in self.servers:
            server.reconfigure(**settings_for(server, settings))  # type: ignore[attr-defined]
            if context is not None and "tls_context" in known_settings(server):
                server.reconfigure(tls_context=context)  # type: ignore[attr-defined]
        if keys is not None and self.nts is not None:
            self.nts[1].replace(keys)  # the KE server's and the NTP servers'
        logging.getLogger().setLevel(log_level(merged))
        self.args = merged
        if restart and not self.quiet:
            logger.warning(
                "reload: %s cannot change while serving; restart to change it",
                ", ".join("--" + name.replace("_", "-") for name in restart),
            )
        where = merged.config_path if merged.config_found else "the command line"
        if self.quiet:  # a worker: its parent says so
            logger.debug("worker reloaded %s", where)
        else:
            logger.info("SIGHUP received; reloaded %s", where)
        self.notify("READY=1")
        return True

    def nts_material(self, new: argparse.Namespace) -> tuple[Any, Any]:
        """Where NTS is served: a TLS context from the certificate and key,
        and the cookie keys from their file (None if kept in memory only),
        all read again, changed or not; (None, None) otherwise."""
        if self.nts is None:
            return None, None
        return self.nts[0](new)
