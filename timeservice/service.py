"""The server program: servers in one process, started and stopped together.

Run it with ``python -m timeservice.server [-b ADDRESS] [PORT]``.
"""

from __future__ import annotations

import argparse
import logging
import socketserver
import sys
import threading
from collections.abc import Sequence

from . import __version__, capabilities
from .cli import (
    add_address_arguments,
    announce,
    choose_cpu,
    configure_logging,
    cpu_choice,
    kept_on_cpu,
    open_server,
    positive,
    program_name,
    stop_on_signals,
)
from .protocol import COMMAND, DEFAULT_PORT, MAX_LINE_BYTES, local_now, utc_now
from .server import IDLE_TIMEOUT, MAX_CONNECTIONS

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
    service = Service([server])
    with stop_on_signals(service.stop), kept_on_cpu(choose_cpu(args.cpu)):
        announce(server)
        service.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
