"""A minimal NTP responder, the floor of what Python spends on a request.

One socket; one datagram a wake-up: select(), recvmsg() with the kernel's
receive time and the address asked, one token bucket per source, a mode-4
reply, sendmsg() from the address asked. With --plain, recvfrom() and
sendto() and no ancillary data. Serves COUNT requests (forever if none)
on a free loopback port, which it prints.
"""

import select
import socket
import struct
import sys
import time

SO_TIMESTAMPNS, IP_PKTINFO, NTP_EPOCH = 35, 8, 2_208_988_800
RATE, BURST = 1e9, 16.0  # the bucket: as good as off, as the benchmark runs


def ntp_time(ns):
    return (ns // 10**9 + NTP_EPOCH) << 32 | (ns % 10**9 << 32) // 10**9


def main(count, plain):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    if not plain:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    print(f"Serving NTP on 127.0.0.1 port {sock.getsockname()[1]}", flush=True)
    buckets, answered, info = {}, 0, []
    while count is None or answered < count:
        select.select([sock], [], [])
        if plain:
            data, source = sock.recvfrom(512)
            received = time.time_ns()
        else:
            data, ancillary, _, source = sock.recvmsg(512, 256)
            sec, nsec = struct.unpack("qq", ancillary[0][2])
            received, info = sec * 10**9 + nsec, [(0, IP_PKTINFO, ancillary[1][2])]
        if len(data) < 48 or data[0] & 7 != 3:
            continue
        tokens, then = buckets.get(source[0], (BURST, received))
        # Stamps of datagrams on other CPUs may run back a little: no refill.
        tokens = min(BURST, tokens + max(0, received - then) * RATE / 1e9)
        if tokens < 1:
            continue
        buckets[source[0]] = (tokens - 1, received)
        head = struct.pack("!BBbb", data[0] & 0x38 | 4, 10, 6, -20) + bytes(12)
        times = struct.pack("!QQ", ntp_time(received), ntp_time(time.time_ns()))
        reply = head + struct.pack("!Q", ntp_time(received)) + data[40:48] + times
        if plain:
            sock.sendto(reply, source)
        else:
            sock.sendmsg([reply], info, 0, source)
        answered += 1


if __name__ == "__main__":
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    main(numbers[0] if numbers else None, "--plain" in sys.argv)
