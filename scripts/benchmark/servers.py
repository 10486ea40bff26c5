"""The servers under test: how each one starts (this server as shipped, with
two workers and from another checkout, the assignment's sketch, an asyncio
server, a C server on epoll built here, and for NTP chronyd), the process that
runs one of them, and the lineup of servers a run measures, chosen once from
its options.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from .load import IDLE_CONNECTIONS, NTP_REQUEST
from .measure import tree_cpu

ROOT = Path(__file__).resolve().parent.parent.parent
PEERS = ROOT / "scripts" / "peers"
START_TIMEOUT = 10.0
NAMES = {  # what the table calls each server
    "ours": "timeservice",
    "workers": "2 workers",
    "seed": "seed sketch",
    "asyncio": "asyncio",
    "c": "C epoll",
    "selectors": "selectors",  # scripts/peers/selectors_server.py
    "limited": "limit on",  # ours with its rate limit on (OURS_LIMITED)
    "responder": "responder",  # scripts/peers/ntp_responder.py
    "chronyd": "chronyd",
    "before": "before",  # ours from --against's checkout
}
COMMANDS = {
    # Ours as shipped, but for caps above the idle connections, which all
    # come from this one host (defaults: 512 in all, 64 per host).
    "ours": [
        sys.executable,
        "-m",
        "timeservice.server",
        "-q",
        "--max-connections",
        str(IDLE_CONNECTIONS + 100),
        "--max-per-host",
        "0",
        "0",
    ],
    # The same with two worker processes (--workers 2), where there is fork().
    "workers": [
        sys.executable,
        "-m",
        "timeservice.server",
        "-q",
        "--workers",
        "2",
        "0",
    ],
    "seed": [sys.executable, str(PEERS / "seed.py")],
    "asyncio": [sys.executable, str(PEERS / "asyncio_streams.py")],
    "selectors": [sys.executable, str(PEERS / "selectors_server.py")],
}
NTP_SERVERS = ("ours", "limited", "responder", "chronyd", "before")  # the rows' order
RESPONDER = [sys.executable, str(PEERS / "ntp_responder.py")]
OURS_NTP = [
    sys.executable,
    "-m",
    "timeservice.server",
    "-q",
    "--ntp",
    "0",
    "--local-stratum",
    "10",
    "--no-rate-limit",
    "0",
]
# Ours with the rate limit on, as the responder's bucket runs: every source
# gets a bucket and the table keeps it, at a rate no load here reaches (the
# program's limit would answer 8 clients from one address 1 in 4).
OURS_LIMITED = [
    sys.executable,
    "-c",
    "from timeservice.server import NtpServer\n"
    "with NtpServer(('127.0.0.1', 0), local_stratum=10, upstream=None, rate=1e9)"
    " as server:\n"
    "    print('Serving NTP on 127.0.0.1 port', server.server_address[1], flush=True)\n"
    "    server.serve_forever()",
]


class Server:
    """One server process to benchmark, ended by its pid when done; it runs in
    `tree`, the checkout whose code it is."""

    def __init__(
        self, name: str, command, tree: Path, line: str | None = r"port (\d+)"
    ):
        self.name = name
        self.process = subprocess.Popen(
            command,
            cwd=tree,
            stdout=subprocess.PIPE,
            text=True,
        )
        if line is None:  # the caller knows the address and when it is ready
            return
        found, text = None, ""
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        # The start-up lines come together: after the first, no more waiting.
        for _ in range(5 if ready else 0):
            text = self.process.stdout.readline()
            found = re.search(line, text)
            if found or not text:
                break
        if not found:
            self.stop()
            raise RuntimeError(f"{name} did not start: {text!r}")
        self.address = ("127.0.0.1", int(found.group(1)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def rss(self) -> int:
        """Resident memory in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far, user and system, its worker processes' too."""
        return tree_cpu(self.process.pid)


def start_ntp_server(name, workdir, tree, command=OURS_NTP, more_config=()):
    """Our NTP service (from the checkout `tree`, run as `command`), or chronyd
    serving its local clock at stratum 10, with the lines `more_config` added
    to its configuration.

    chronyd has no rate limit unless its configuration sets one; -x leaves
    the system clock alone. It is ready once it answers.
    """
    if name in ("ours", "before", "responder", "limited"):
        command = {"responder": RESPONDER, "limited": OURS_LIMITED}.get(name, command)
        return Server(name, command, tree, r"Serving NTP on \S+ port (\d+)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Path(workdir) / "chrony.conf"
    config.write_text(
        f"local stratum 10\nport {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\n"
        f"cmdport 0\npidfile {workdir}/chronyd.pid\n"
        + "".join(f"{line}\n" for line in more_config)
    )
    chronyd = ["chronyd", "-d", "-x", "-u", "root", "-f", str(config)]
    server = Server(name, chronyd, ROOT, line=None)
    server.address = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(75):  # each try waits on the socket: 15 s at the most
            sock.sendto(NTP_REQUEST, server.address)
            try:
                if sock.recv(512)[1] != 0:  # stratum 10: the local clock is in use
                    return server
            except TimeoutError:
                continue
            with contextlib.suppress(TimeoutError):
                sock.recv(512)
    server.stop()
    raise RuntimeError("chronyd did not answer as stratum 10")


def build(workdir, name, *flags):
    """A C peer, compiled from scripts/peers/NAME.c with the system's C
    compiler; None, with a message, where it cannot be."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print(f"no C compiler (cc): no {name}", file=sys.stderr)
        return None
    binary = os.path.join(workdir, name)
    source = str(PEERS / f"{name}.c")
    built = subprocess.run(
        [compiler, "-O2", *flags, "-o", binary, source],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        print(f"{name}.c did not build:\n{built.stderr}", file=sys.stderr)
        return None
    return binary


@dataclass(frozen=True)
class Lineup:
    """The servers one run measures, chosen once from its options and passed
    down: nothing about them changes while the run lasts."""

    commands: Mapping[str, Sequence[str]]  # the TCP servers, in the table's order
    ntp: Sequence[str]  # the NTP servers, in the table's order
    trees: Mapping[str, Path]  # where a server's code is, where not ROOT
    names: Mapping[str, str]  # what the table calls each of them

    def tree(self, name: str) -> Path:
        """Where a server's code is: ROOT, but for --against's "before"."""
        return self.trees.get(name, ROOT)

    def start(self, name: str) -> Server:
        """The TCP server `name`, started afresh."""
        return Server(name, self.commands[name], self.tree(name))


def choose_servers(c_server, only, against, ntp) -> Lineup:
    """Ours, and the others `only` names (all where it is None): the C server
    where `c_server` (its binary) was built, "workers" where there is fork(),
    "before" from the checkout `against` where given; with `ntp`, the NTP
    servers among them and chronyd, where it is installed."""
    built = {"c": [c_server]} if c_server is not None else {}
    before = {"before": COMMANDS["ours"]} if against is not None else {}
    available = {
        name: command
        for name, command in (COMMANDS | built | before).items()
        if name != "workers" or hasattr(os, "fork")
    }
    wanted = set(only or available) | {"ours"} | set(before)
    # chronyd, the limit, and the minimal responder, the floor, always, and
    # ours with its rate limit on beside it.
    always = {"chronyd", "responder", "limited"}
    ntp_servers = [n for n in NTP_SERVERS if n in wanted | always]
    if not shutil.which("chronyd"):
        print("chronyd is not installed; no chronyd row", file=sys.stderr)
        ntp_servers.remove("chronyd")
    if not ntp:
        ntp_servers = []
    commands = {name: available[name] for name in available if name in wanted}
    return Lineup(
        commands=commands,
        ntp=tuple(ntp_servers),
        trees={"before": against} if against is not None else {},
        names={name: NAMES[name] for name in [*commands, *ntp_servers]},
    )
