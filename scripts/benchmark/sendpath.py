"""The send part, what is left of a basic NTP reply's error in this tree:
the kernel's receive time of a basic reply at the client, on loopback
(SO_TIMESTAMPNS, taken as the datagram is handed over within the server's
send), minus the transmit timestamp it carries, says how much later than
its timestamp it left; never less than 0. Plain client requests, answered
as any basic client's are (NtpServer.answer()). Idle: one request each
IDLE_GAP (chronyd's ``minpoll -4``), as a server woken for each; busy:
back to back, a round trip apart.
"""

from __future__ import annotations

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
    """Each pace's arrival minus the transmit timestamp written, in
    microseconds: p10, p50, p90; {} where the kernel gives no receive times."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from timeservice.host import capabilities
    from timeservice.server import NtpHandler, NtpServer
    from timeservice.transport.ancillary import SO_TIMESTAMPNS, stamp_of
    from timeservice.wire import ntp

    if not capabilities.RECEIVE_TIMESTAMPS:
        return {}
    server = NtpServer(
        ("127.0.0.1", 0), NtpHandler, local_stratum=10, upstream=None, burst=None
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    found = {}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            counts = QUICK_COUNTS if quick else COUNTS
            for pace, count in counts.items():
                costs = []
                for serial in range(count):
                    sock.sendto(ntp.request_packet(serial), server.server_address)
                    data, ancillary, _, _ = sock.recvmsg(512, 256)
                    arrived = stamp_of(ancillary)
                    reply = ntp.Packet.unpack(data)
                    if arrived is not None:
                        sent = ntp.from_timestamp(reply.transmit, arrived)
                        costs.append((arrived - sent) / 1000)
                    if pace == "idle":
                        time.sleep(IDLE_GAP)
                costs.sort()
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
        return "send: the kernel gives no receive times here"
    lines = [
        "a basic NTP reply: its arrival at the client minus its transmit timestamp, µs",
        f"{'pace':<6} {'replies':>7} {'p10':>6} {'p50':>6} {'p90':>6}",
    ]
    for pace, row in found.items():
        lines.append(
            f"{pace:<6} {row['replies']:>7} {row['p10']:>6.1f} {row['p50']:>6.1f} "
            f"{row['p90']:>6.1f}"
        )
    return "\n".join(lines)
