"""The forged part: a forger sends NTP requests with a client's source address
(127.0.0.5, which loopback holds) at a given rate while the client asks twice
a second from the same address, against this server and chronyd with their
rate limits on, each started afresh for every rate; it counts the client's
answers, and every datagram the address got against every one it sent, to
draw the curve of forged rate against the client's answers.
"""

from __future__ import annotations

import select
import socket
import statistics
import sys
import time

from .servers import OURS_NTP, ROOT, start_ntp_server

if str(ROOT) not in sys.path:  # scripts/bench.py puts scripts/ there, not ROOT
    sys.path.append(str(ROOT))
from timeservice.wire.ntp import PACKET_BYTES, request_packet  # noqa: E402

FORGED_RATES = (20, 200, 2000)  # forged datagrams a second, one run each
QUICK_RATES = (20, 200)
FORGED_SECONDS = 10.0
QUICK_SECONDS = 2.0
CLIENT_INTERVAL = 0.5  # the client asks twice a second
REPLY_WAIT = 0.5  # seconds after the last send that a reply still counts
ADDRESS = "127.0.0.5"  # the client's, and the forger's: any 127/8 is local
SERVERS = ("ours", "chronyd")
# Ours as the NTP rows start it, but with its rate limit on, as shipped.
OURS_RATE_LIMITED = [arg for arg in OURS_NTP if arg != "--no-rate-limit"]
# chronyd as the NTP rows configure it, letting the address ask, with a
# rate limit: 16 at once, then one per 2**1 s, and 1 in 2**2 leaked beyond.
CHRONY_LINES = (f"allow {ADDRESS}", "ratelimit interval 1 burst 16 leak 2")


def start(name, workdir):
    """The server `name` ("ours" or "chronyd"), started afresh: a fresh
    rate-limit state."""
    return start_ntp_server(
        name, workdir, ROOT, command=OURS_RATE_LIMITED, more_config=CHRONY_LINES
    )


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ADDRESS, 0))
    sock.setblocking(False)
    return sock


def forge(server_address, rate, seconds) -> dict:
    """One run: the forger sends `rate` requests a second for `seconds`, paced
    evenly, while the client asks every CLIENT_INTERVAL, both from ADDRESS;
    what the client got, and what the address got and sent in all."""
    forger, client = udp_socket(), udp_socket()
    forged_total = int(rate * seconds)
    asked_total = int(seconds / CLIENT_INTERVAL)
    forged = asked = received = answered = kisses = 0
    waiting = set()  # the origins of the client's requests not yet answered
    try:
        start = time.monotonic()
        end = start + seconds
        give_up = end + REPLY_WAIT
        while True:
            now = time.monotonic()
            if now >= give_up:
                break
            due = min(forged_total, int((now - start) * rate) + 1)
            while forged < due:
                forger.sendto(request_packet(time.time_ns()), server_address)
                forged += 1
            if asked < asked_total and now >= start + asked * CLIENT_INTERVAL:
                request = request_packet(time.time_ns())
                waiting.add(request[40:48])
                client.sendto(request, server_address)
                asked += 1
            next_forged = start + forged / rate if forged < forged_total else give_up
            next_asked = (
                start + asked * CLIENT_INTERVAL if asked < asked_total else give_up
            )
            timeout = max(0.0, min(next_forged, next_asked, give_up) - now)
            readable, _, _ = select.select([forger, client], [], [], timeout)
            for sock in readable:
                for reply in drain(sock):
                    received += 1
                    if sock is client and reply[24:32] in waiting:
                        waiting.discard(reply[24:32])
                        if len(reply) >= PACKET_BYTES and reply[1] != 0:
                            answered += 1
                        else:
                            kisses += 1  # stratum 0: a Kiss-o'-Death
    finally:
        forger.close()
        client.close()
    return {
        "forged": forged,
        "forged_per_second": forged / seconds,
        "client_asked": asked,
        "client_answered": answered,
        "client_kisses": kisses,
        "address_sent": forged + asked,
        "address_received": received,
    }


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on the non-blocking socket `sock`."""
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(512))
        except BlockingIOError:
            return datagrams


def lineup(ntp_servers) -> list[str]:
    """The servers this part measures: ours, and chronyd where the lineup has
    it (where it is installed)."""
    return [name for name in SERVERS if name in ntp_servers]


def measure_round(number, servers, workdir, quick, progress) -> list[dict]:
    """One round: every rate, and for each the servers in turns, each started
    afresh; a row per server and rate."""
    rates, seconds = (
        (QUICK_RATES, QUICK_SECONDS) if quick else (FORGED_RATES, FORGED_SECONDS)
    )
    turn = number % max(1, len(servers))
    rows = []
    for rate in rates:
        for name in servers[turn:] + servers[:turn]:
            progress(name, f"{rate} forged requests/s")
            with start(name, workdir) as server:
                rows.append(
                    {"server": name, "rate": rate}
                    | forge(server.address, rate, seconds)
                )
    return rows


def summarise(rounds: list[list[dict]], quick: bool) -> dict:
    """The figures for the JSON report: per server and rate, the client's
    median answers over the rounds, the round in which the address got the
    most per datagram it sent, and every round."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for rows in rounds:
        for row in rows:
            runs.setdefault((row["server"], row["rate"]), []).append(row)
    results = []
    for (server, rate), by_round in sorted(
        runs.items(), key=lambda item: (item[0][1], SERVERS.index(item[0][0]))
    ):
        worst = max(by_round, key=lambda r: r["address_received"] / r["address_sent"])
        results.append(
            {
                "server": server,
                "rate": rate,
                "client_answered": statistics.median(
                    r["client_answered"] for r in by_round
                ),
                "client_asked": by_round[0]["client_asked"],
                "address_received": worst["address_received"],
                "address_sent": worst["address_sent"],
                "rounds": by_round,
            }
        )
    return {
        "address": ADDRESS,
        "seconds": QUICK_SECONDS if quick else FORGED_SECONDS,
        "client_interval": CLIENT_INTERVAL,
        "chronyd_config": list(CHRONY_LINES),
        "ours_command": " ".join(["python", *OURS_RATE_LIMITED[1:]]),
        "rows": results,
    }


def table(report: dict, names, machine: bool) -> str:
    """The forged part of `report` as text: a row per server and forged rate,
    after a line on the machine where `machine` asks for it."""
    forged, m = report["forged"], report["machine"]
    out = [f"{m['cpu']}, {m['cores']} cores, {m['kernel']}"] if machine else ["", ""]
    out += [
        f"a forger sends from {forged['address']} for {forged['seconds']:g} s while"
        f" the client asks every {forged['client_interval']:g} s from it too",
        "",
        f"{'server':<12} {'forged/s':>8} {'client answered':>15}"
        f"  {'address got/sent':>17} {'got ÷ sent':>10}",
    ]
    for row in forged["rows"]:
        answered = f"{row['client_answered']:g}/{row['client_asked']}"
        got_sent = f"{row['address_received']}/{row['address_sent']}"
        share = row["address_received"] / row["address_sent"]
        out.append(
            f"{names[row['server']]:<12} {row['rate']:>8} {answered:>15}"
            f"  {got_sent:>17} {share:>10.3f}"
        )
    out += [
        "",
        "client answered: its requests answered (origin matched, not a kiss),",
        "the median over the rounds; address got/sent: every datagram to",
        f"{forged['address']} ÷ every one from it, in the round with the most per",
        "datagram sent. chronyd: " + "; ".join(forged["chronyd_config"]) + ".",
    ]
    return "\n".join(out)
