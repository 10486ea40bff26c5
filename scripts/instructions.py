#!/usr/bin/env python3
"""Count the instructions the server spends on each request, with valgrind.

Seconds on a shared machine move by tens of percent between runs;
instructions do not. The server runs under ``valgrind --tool=callgrind``
twice, once answering N requests and once M, and the difference between the
two totals, divided by M - N, is what one request costs: start-up, imports
and shutdown cancel out. The server is the tree's own library, driven by
handle_request(), so that nothing runs while it waits; the requests come
from this process, one at a time.

    python scripts/instructions.py [--tree PATH] [--requests N M] PATH_KIND...

PATH_KIND is ``line`` (one persistent connection, served by a handler),
``line-loop`` (the same, answered by the serving loop, as the program
serves it), ``ntp`` (NTP with its
rate limit off, as the benchmark's NTP row runs it), ``ntp-limited`` (NTP
as shipped, the requests spread over 200 loopback addresses so that each
stays within its burst), or the floor Python sets for NTP:
``responder`` (scripts/peers/ntp_responder.py: the kernel's receive time,
the address asked, a token bucket) and ``responder-plain`` (recvfrom and
sendto, no ancillary data). --tree measures another checkout of the project,
for an A/B comparison of two trees.
"""

from __future__ import annotations

import argparse
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0  # valgrind makes the interpreter's start-up slow
REPLY_TIMEOUT = 10.0
SOURCES = 200  # addresses the limited NTP requests come from
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)

# What runs under valgrind: the server alone, built from the library of the
# tree measured and driven by handle_request(), so that no loop turns and no
# timer fires while it waits: what it counts is what the requests cost.
HARNESS = {
    "line": """
import select
from timeservice.server import TimeServer
with TimeServer(("127.0.0.1", 0)) as server:
    print("port", server.server_address[1], flush=True)
    select.select([server.socket], [], [])
    request, address = server.get_request()  # the one connection, served here
    if server.verify_request(request, address):
        server.finish_request(request, address)
    server.shutdown_request(request)
""",
    # The same connection through serve_forever(), whose thread answers it
    # (transport/inloop.py); the loop ends once the connection has.
    "line-loop": """
import threading
from timeservice.server import TimeServer
class Counted(TimeServer):
    def shutdown_request(self, request):
        super().shutdown_request(request)
        threading.Thread(target=self.shutdown).start()
with Counted(("127.0.0.1", 0)) as server:
    print("port", server.server_address[1], flush=True)
    server.serve_forever(poll_interval=3600)
""",
    # NTP through serve_forever(), the loop the program runs, which ends
    # itself once `count` are answered (one shutdown thread a run: it cancels
    # out between the two runs).
    "ntp": """
import sys, threading
from timeservice.server import NtpServer
count = int(sys.argv[1])
class Counted(NtpServer):
    def service_actions(self):
        super().service_actions()
        if self.answered == count:
            threading.Thread(target=self.shutdown).start()
with Counted(("127.0.0.1", 0), local_stratum=10, upstream=None, burst=None) as server:
    # One datagram a wake-up: whether the next has come yet is a race, and a
    # read that finds none raises, which would count as much as a datagram.
    server.batch = 1
    print("port", server.server_address[1], flush=True)
    server.serve_forever(poll_interval=3600)
""",
}
HARNESS["ntp-limited"] = HARNESS["ntp"].replace(", burst=None", "")
HARNESS["x-noservice"] = HARNESS["line-loop"].replace(
    "class Counted(TimeServer):",
    "class Counted(TimeServer):\n    def service_actions(self): pass",
)
# The floor: a minimal responder (scripts/peers/ntp_responder.py) with the
# kernel's receive time and the address asked, and the same without them.
RESPONDER = f"""
import sys
sys.path.insert(0, {str(ROOT / "scripts" / "peers")!r})
import ntp_responder
ntp_responder.main(int(sys.argv[1]), plain=PLAIN)
"""
HARNESS["responder"] = RESPONDER.replace("PLAIN", "False")
HARNESS["responder-plain"] = RESPONDER.replace("PLAIN", "True")
KINDS = HARNESS


def ntp_request(serial: int) -> bytes:
    """A version 4 client request whose transmit timestamp is `serial`."""
    return struct.pack("!B39xQ", 0x23, serial + 1)


def start(tree: Path, kind: str, out: str, count: int) -> tuple[subprocess.Popen, int]:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-c",
        HARNESS[kind],
        str(count),
    ]
    process = subprocess.Popen(
        command, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    found = re.search(r"port (\d+)$", line.strip())
    if found is None:
        process.kill()
        raise RuntimeError(f"the server under valgrind did not start ({kind})")
    return process, int(found[1])


def ask_line(port: int, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port), REPLY_TIMEOUT) as sock:
        reader = sock.makefile("rb")
        for _ in range(count):
            sock.sendall(b"send time\n")
            if not reader.readline().endswith(b"\n"):
                raise RuntimeError("no reply line")


def ask_ntp(port: int, count: int, sources: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.settimeout(REPLY_TIMEOUT)
        for serial in range(count):
            request = ntp_request(serial)
            source = f"127.0.{1 + serial % sources // 250}.{1 + serial % 250}"
            info = struct.pack("@i4s4s", 0, socket.inet_aton(source), bytes(4))
            sock.sendmsg(
                [request],
                [(socket.IPPROTO_IP, IP_PKTINFO, info)],
                0,
                ("127.0.0.1", port),
            )
            for _ in range(8):  # strays at most: each reply comes in turn
                reply = sock.recv(512)
                if reply[24:32] == request[40:48]:
                    break
            else:
                raise RuntimeError("no reply to a request")


def instructions(tree: Path, kind: str, count: int) -> int:
    """The server's whole instruction count for a run answering `count`."""
    with tempfile.TemporaryDirectory() as workdir:
        out = f"{workdir}/callgrind.out"
        process, port = start(tree, kind, out, count)
        try:
            if kind.startswith(("line", "x-")):
                ask_line(port, count)
            else:
                ask_ntp(port, count, SOURCES if kind == "ntp-limited" else 1)
            process.communicate(timeout=START_TIMEOUT)  # it ends by itself
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        text = Path(out).read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("callgrind wrote no total")
    return int(found[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kinds", nargs="+", choices=KINDS, metavar="PATH_KIND")
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument(
        "--requests", type=int, nargs=2, default=(500, 2500), metavar=("N", "M")
    )
    args = parser.parse_args(argv)
    low, high = args.requests
    for kind in args.kinds:
        fewer = instructions(args.tree, kind, low)
        more = instructions(args.tree, kind, high)
        per = (more - fewer) / (high - low)
        print(f"{kind}: {per:,.0f} instructions per request ({args.tree})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
