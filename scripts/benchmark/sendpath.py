"""The send part, what is left of a basic NTP reply's error in this tree: a
basic reply reads its transmit timestamp last, then Python sends it, and
the kernel's transmit time of the same datagram says how much later it
left. This server asks the kernel for it only for replies to requests that
look interleaved, so the client here sends such requests naming nothing
the server keeps: each is answered in basic mode, its clock read last, and
stamped. Idle: one request each IDLE_GAP (chronyd's ``minpoll -4``), as a
server woken for each; busy: back to back, a round trip apart.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
IDLE_GAP = 1 / 16  # seconds between requests when idle
COUNTS = {"idle": 320, "busy": 3000}  # requests a pace, about 20 s and 1 s
QUICK_COUNTS = {"idle": 32, "busy": 300}


def measure(quick: bool) -> dict:
    """Each pace's kernel transmit time minus the transmit timestamp written,
    in microseconds: p10, p50, p90; {} where the kernel gives no times."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from timeservice.server import NtpHandler, NtpServer
    from timeservice.wire import ntp

    left: dict[int, int] = {}  # by the reply's receive timestamp

    class Recording(NtpServer):
        def transmitted(self, token, transmit_ns: int) -> None:
            left[token[1]] = transmit_ns
            super().transmitted(token, transmit_ns)

    server = Recording(
        ("127.0.0.1", 0), NtpHandler, local_stratum=10, upstream=None, burst=None
    )
    if not server.interleaving:
        server.server_close()
        return {}
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    found = {}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            counts = QUICK_COUNTS if quick else COUNTS
            for pace, count in counts.items():
                written = {}
                for serial in range(count):
                    request = bytearray(ntp.request_packet(0))
                    request[24:32] = (2 * serial + 1).to_bytes(8, "big")  # odd
                    request[32:48] = os.urandom(16)
                    sock.sendto(bytes(request), server.server_address)
                    reply = ntp.Packet.unpack(sock.recv(512))
                    written[reply.receive] = ntp.from_timestamp(
                        reply.transmit, time.time_ns()
                    )
                    if pace == "idle":
                        time.sleep(IDLE_GAP)
                costs = sorted(
                    (left[receive] - ns) / 1000
                    for receive, ns in written.items()
                    if receive in left
                )
                n = len(costs)
                found[pace] = {
                    "replies": n,
                    "p10": costs[n // 10],
                    "p50": costs[n // 2],
                    "p90": costs[9 * n // 10],
                }
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    return found


def table(found: dict) -> str:
    """The part's rows, one a pace."""
    if not found:
        return "send: the kernel gives no transmit times here"
    lines = [
        "a basic NTP reply: the kernel's transmit time minus its transmit "
        "timestamp, µs",
        f"{'pace':<6} {'replies':>7} {'p10':>6} {'p50':>6} {'p90':>6}",
    ]
    for pace, row in found.items():
        lines.append(
            f"{pace:<6} {row['replies']:>7} {row['p10']:>6.1f} {row['p50']:>6.1f} "
            f"{row['p90']:>6.1f}"
        )
    return "\n".join(lines)
