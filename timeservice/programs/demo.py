"""The demo: a time server in one thread and its clients in others, in one process.

Run it with ``python -m timeservice``; it picks a free port unless told one.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from .. import __version__
from ..clients.line import TimeClient
from ..servers.line import TimeServer
from ..wire.line import COMMAND, format_timestamp
from .options import (
    Parser,
    add_address_arguments,
    announce,
    configure_logging,
    ctrl_c_held,
    join_port,
    listen,
    positive,
    program,
    program_name,
    say,
)

POLL_INTERVAL = 0.05  # how quickly the demo's server notices it should stop


def client_host(bound: str) -> str:
    """Where a client on this machine reaches a server bound to `bound`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, bound)


@program("timeservice")
def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, let the clients ask it for the time, print what they got."""
    prog = program_name("timeservice")
    parser = Parser(
        prog=prog,
        description="Run a time server and clients asking it, in one process.",
        epilog=f"example: {prog} -n 3",
    )
    add_address_arguments(parser, 0)
    parser.add_argument(
        "-n",
        "--clients",
        type=positive(int),
        default=1,
        metavar="N",
        help="client threads asking at once (default: %(default)s)",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    args = parser.parse_args(argv)
    args.bind, port = join_port(parser, args.bind, args.port)
    args.port = 0 if port is None else port

    configure_logging(logging.INFO)
    server = listen(prog, args.bind, args.port, TimeServer)
    if server is None:
        return 1
    host, port = server.server_address[:2]
    answers: list[str | Exception] = [""] * args.clients

    def ask(index: int) -> None:
        try:
            with TimeClient(client_host(str(host)), port) as client:
                answers[index] = format_timestamp(client.get_time())
        except Exception as exc:  # reported below, by the main thread
            answers[index] = exc

    with server:
        announce(server)
        # The server's thread starts and stops whole, below; the clients'
        # are daemons: whenever a Ctrl-C comes, even inside a client's
        # start(), none is left that keeps the program running.
        serving = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
        )
        try:
            with ctrl_c_held():  # started whole, so the finally knows it runs
                serving.start()
            clients = [
                threading.Thread(target=ask, args=(i,), daemon=True)
                for i in range(args.clients)
            ]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
        finally:  # stop serving before the socket closes, even on Ctrl-C
            with ctrl_c_held():
                if serving.is_alive():
                    server.shutdown()
                    serving.join()

    failed = 0
    for number, answer in enumerate(answers, 1):
        if isinstance(answer, Exception):
            print(f"{prog}: client {number} failed: {answer}", file=sys.stderr)
            failed += 1
        else:
            say(f"client {number} sent {COMMAND!r}, got {answer}")
    say("Server stopped.")
    return 1 if failed else 0
