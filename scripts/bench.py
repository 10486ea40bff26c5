#!/usr/bin/env python3
"""Benchmark timeservice against the assignment's sketch, an asyncio server and
a minimal C server on epoll (built with the system's C compiler, if any).

Each server runs as its own process on loopback, port 0. The load comes from
a generator written in C (scripts/peers/load.c, built like the C server): a
thread per connection, each in a closed request/reply loop, so that it can
drive more than any server here can take. Where there is no C compiler, the
load comes from Python processes instead, and the rows say so. For every
workload the server's CPU time per reply (user and system, its whole process
tree, from /proc) stands beside its rate, and so does the generator's: a row
where the generator used most of the CPU the server left it is marked
generator-bound, and no rate ratio is made of it.

A round starts every server afresh for every workload, the servers taking
turns, so that the machine's drift hits all of them alike; the table shows
the median over the rounds and the spread between them. Progress goes to
stderr, the table to stdout. Where chronyd is installed, NTP over UDP is
measured too: this server's NTP service against chronyd serving ``local
stratum 10``, both with their rate limits off, ours again with its limit on
(every source in its table, at a rate the load never reaches), and a minimal
responder (scripts/peers/ntp_responder.py), the floor. A part not in the default set,
``--parts forged``, sends NTP requests forged from a client's address (20, 200
and 2,000 a second for 10 s) to both with their rate limits on, while the
client asks twice a second from that address: it counts the client's answers,
and every datagram the address got against every one it sent. ``--parts nts``
measures NTS against chronyd's: Key Establishments a second (from Python
processes) and NTS-authenticated requests a second (requests made ahead of
time, sent by the C generator), with the server's CPU per exchange and
request.

    python scripts/bench.py [--rounds N] [--seconds S] [--quick] [--json FILE]
        [--against TREE] [--only NAME,...] [--parts PART,...] [--python-load]

Its parts are in scripts/benchmark/, one concern per module: the servers under
test, the load, the measuring, the report, the command line and the forged
part.
"""

import sys

from benchmark.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
