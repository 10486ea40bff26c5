"""Answer only what was asked of this host: no broadcast or multicast request
is answered, and no datagram that is itself a Daytime or Time answer, so no
two servers answer each other forever, in one process or two, on one host
or two. Real server processes, real datagrams; a forged one comes from a raw
socket, in a network namespace of the test's own where it leaves loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator

import pytest
from conftest import (
    CLIENT_V4,
    SERVER_V4,
    in_namespace,
    ip,
    namespace,
    needs_netns,
    readline_within,
    server_process,
    two_hosts,
)

from timeservice.host import capabilities
from timeservice.wire import ntp

SERVING = re.compile(r"Serving (.+?) on \S+ port (\d+)")
SERVICES = {  # the start-up lines' names
    "daytime": "daytime",
    "time (RFC 868)": "rfc868",
    "NTP": "ntp",
    "metrics": "metrics",
}

# Sends one UDP datagram from any address and port, the kernel writing the
# IP header: argv is source, source port, destination, port, payload (hex).
FORGE = """
import socket, struct, sys
source, sport, destination, dport, payload = sys.argv[1:]
data = bytes.fromhex(payload)
header = struct.pack("!HHHH", int(sport), int(dport), 8 + len(data), 0)
family = socket.AF_INET6 if ":" in destination else socket.AF_INET
with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
    if family == socket.AF_INET6:  # a checksum is a must: the kernel's, at 6
        raw.setsockopt(socket.IPPROTO_IPV6, 7, 6)  # IPV6_CHECKSUM
        where = socket.getaddrinfo(source, 0, family, socket.SOCK_DGRAM)[0][4]
        raw.bind(where)
        target = socket.getaddrinfo(destination, 0, family, socket.SOCK_DGRAM)[0][4]
    else:  # 0 is "no checksum" in IPv4
        raw.bind((source, 0))
        target = (destination, 0)
    raw.sendto(header + data, target)
"""

# Asks each (address, port, payload hex) once and says how many replies came
# before the next: JSON, one count each. Broadcast and multicast allowed.
ASK = """
import json, socket, sys
bind, asks = sys.argv[1], json.loads(sys.argv[2])
counts = []
for address, port, payload in asks:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    where = socket.getaddrinfo(address, port, family, socket.SOCK_DGRAM)[0][4]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if bind:
                sock.bind((bind, 0))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(bind))
        sock.settimeout(0.5)
        sock.sendto(bytes.fromhex(payload), where)
        got = 0
        for _ in range(20):
            try:
                sock.recv(512)
            except TimeoutError:
                break
            got += 1
        counts.append(got)
print(json.dumps(counts))
"""

# The counts of one server's metrics, by name and labels, as JSON.
SCRAPE = """
import json, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10)
counts = {}
for line in text.read().decode().splitlines():
    if line and not line.startswith("#"):
        name, value = line.rsplit(" ", 1)
        counts[name] = float(value)
print(json.dumps(counts))
"""


@contextlib.contextmanager
def serving(ns: str, *options: str, portable: bool = False) -> Iterator[dict[str, int]]:
    """A server process in `ns` and the port of each service it names; on
    the portable paths if `portable`."""
    launcher = ("ip", "netns", "exec", ns)
    env = {"TIMESERVICE_PORTABLE": "1"} if portable else None
    wanted = {SERVICES[name] for name in SERVICES if f"--{SERVICES[name]}" in options}
    wanted |= {"rfc868"} if "--time" in options else set()
    wanted |= {"ntp"} if "--ntp" in options else set()
    with server_process(*options, "-q", env=env, launcher=launcher) as (process, port):
        ports = {"line": port}
        while not wanted <= ports.keys():
            found = SERVING.search(readline_within(process.stdout))
            assert found, "a start-up line"
            ports[SERVICES[found[1]]] = int(found[2])
        yield ports


def counts(ns: str, metrics_port: int) -> dict[str, float]:
    return json.loads(in_namespace(ns, SCRAPE, str(metrics_port)))


def requests(metrics: dict[str, float], protocol: str) -> float:
    return metrics.get(
        f'timeservice_requests_total{{protocol="{protocol}",transport="udp"}}', 0.0
    )


def loops(metrics: dict[str, float], protocol: str) -> float:
    return metrics.get(
        f'timeservice_refused_total{{cause="loop",protocol="{protocol}",'
        'transport="udp"}',
        0.0,
    )


def ask(ns: str, address: str, port: int, payload: bytes = b"") -> int:
    """How many replies one datagram got."""
    [got] = json.loads(in_namespace(ns, ASK, "", json.dumps([[address, port, ""]])))
    return got


Where = tuple[str, str, dict[str, int]]  # namespace, address, ports


def no_loop_between(forge_in: str, source: str, daytime: Where, time_: Where) -> None:
    """One datagram forged from Daytime's port to Time's starts no loop:
    Time answers it, and Daytime takes Time's answer for what it is."""
    daytime_ns, daytime_address, daytime_ports = daytime
    time_ns, time_address, time_ports = time_
    in_namespace(
        forge_in,
        FORGE,
        source,
        str(daytime_ports["daytime"]),
        time_address,
        str(time_ports["rfc868"]),
        "",
    )
    # Each answers a probe after the forged exchange, in order.
    assert ask(daytime_ns, daytime_address, daytime_ports["daytime"]) == 1
    assert ask(time_ns, time_address, time_ports["rfc868"]) == 1
    at_daytime = counts(daytime_ns, daytime_ports["metrics"])
    at_time = counts(time_ns, time_ports["metrics"])
    # 2.0.0: tens of thousands of answers in a second, still rising.
    assert requests(at_time, "time") == 2  # the forged datagram and the probe
    assert requests(at_daytime, "daytime") == 1  # the probe only
    assert loops(at_daytime, "daytime") == 1  # Time's answer, not answered


SERVICE = ("--no-rate-limit", "--metrics", "0")


def service_ports(options: tuple[str, ...]) -> tuple[str, ...]:
    return ("0", *options, *SERVICE)


@needs_netns
@pytest.mark.slow
def test_two_instances_on_one_host_answer_each_other_once():
    with namespace("loop") as ns:
        with serving(ns, *service_ports(("--daytime", "0"))) as daytime:
            with serving(ns, *service_ports(("--time", "0"))) as time_:
                no_loop_between(
                    ns,
                    "127.0.0.1",
                    (ns, "127.0.0.1", daytime),
                    (ns, "127.0.0.1", time_),
                )


@needs_netns
@pytest.mark.slow
def test_two_hosts_answer_each_other_once():
    with two_hosts() as (server_ns, client_ns):
        wildcard = ("-b", "0.0.0.0")
        with serving(server_ns, *wildcard, *service_ports(("--daytime", "0"))) as one:
            with serving(client_ns, *wildcard, *service_ports(("--time", "0"))) as two:
                no_loop_between(
                    server_ns,
                    SERVER_V4,
                    (server_ns, SERVER_V4, one),
                    (client_ns, CLIENT_V4, two),
                )


@needs_netns
@pytest.mark.slow
def test_the_hosts_link_local_address_starts_no_loop_in_one_process():
    with namespace("ll") as ns:
        ip("-n", ns, "link", "add", "ll0", "type", "veth", "peer", "name", "ll1")
        ip("-n", ns, "addr", "add", "fe80::1/64", "dev", "ll0", "nodad")
        for end in ("ll0", "ll1"):
            ip("-n", ns, "link", "set", end, "up")
        options = ("-b", "::", "--daytime", "0", "--time", "0")
        with serving(ns, *service_ports(options)) as both:
            where = (ns, "fe80::1%ll0", both)
            no_loop_between(ns, "fe80::1%ll0", where, where)


# Unicast only

REQUESTS = {
    "daytime": b"",
    "rfc868": b"",
    "ntp": ntp.request_packet(1 << 32),
}


@needs_netns
@pytest.mark.slow
@pytest.mark.skipif(
    not capabilities.DESTINATION_ADDRESS,
    reason="where the platform does not say a datagram's destination, only a "
    "unicast bind answers unicast only (the test after this one)",
)
@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_broadcast_and_multicast_requests_get_no_answer(wildcard):
    options = ("-b", wildcard, "0", "--daytime", "0", "--time", "0", "--ntp", "0")
    options += ("--metrics", "0")
    with two_hosts() as (server_ns, client_ns):
        with serving(server_ns, *options, "--local-stratum", "10") as ports:
            shared = ["192.0.2.255", "255.255.255.255", "224.0.0.1"]
            if wildcard == "::":
                shared.append(f"ff02::1%ts{os.getpid()}c")  # the client's end
            asks = [
                [address, ports[name], payload.hex()]
                for name, payload in REQUESTS.items()
                for address in [SERVER_V4, *shared]
            ]
            got = json.loads(in_namespace(client_ns, ASK, CLIENT_V4, json.dumps(asks)))
            answered = {
                (address, port): count
                for (address, port, _), count in zip(asks, got, strict=True)
            }
            # And on the server's own loopback, its broadcast address.
            local = [
                ["127.255.255.255", ports[name], payload.hex()]
                for name, payload in REQUESTS.items()
            ] + [["127.0.0.1", ports["ntp"], REQUESTS["ntp"].hex()]]
            local_got = json.loads(
                in_namespace(server_ns, ASK, "127.0.0.1", json.dumps(local))
            )
            metrics = counts(server_ns, ports["metrics"])
    # Dropped and counted, each protocol's (the server's own broadcast
    # included; a dual-stack socket may not hear every multicast): on "::"
    # 2.0.0 read them too, and its replies failed (ENETUNREACH).
    for protocol in ("daytime", "time", "ntp"):
        name = f'timeservice_refused_total{{cause="not_unicast",protocol="{protocol}"'
        assert metrics[f'{name},transport="udp"}}'] >= len(shared), protocol
    for (address, _), count in answered.items():
        assert count == (1 if address == SERVER_V4 else 0), (address, count)
    assert local_got == [0, 0, 0, 1]  # 2.0.0 answered all four


@needs_netns
@pytest.mark.slow
def test_where_the_destination_is_unknown_a_unicast_bind_answers_unicast_only():
    options = ("--daytime", "0", "--time", "0", "--ntp", "0", "--local-stratum", "10")
    with two_hosts() as (server_ns, client_ns):
        with server_process(
            "-b", "0.0.0.0", "0", "--ntp", "0",
            env={"TIMESERVICE_PORTABLE": "1"},
            launcher=("ip", "netns", "exec", server_ns),
        ) as (process, _):  # fmt: skip
            warned = ""
            for _ in range(10):
                warned = readline_within(process.stderr)
                if "cannot tell which address" in warned:
                    break
            assert "bind this host's addresses to answer unicast only" in warned
        with serving(server_ns, "-b", SERVER_V4, "0", *options, portable=True) as ports:
            asks = [
                [address, ports[name], payload.hex()]
                for name, payload in REQUESTS.items()
                for address in [
                    SERVER_V4,
                    "192.0.2.255",
                    "255.255.255.255",
                    "224.0.0.1",
                ]
            ]
            got = json.loads(in_namespace(client_ns, ASK, CLIENT_V4, json.dumps(asks)))
    for (address, _, _), count in zip(asks, got, strict=True):
        assert count == (1 if address == SERVER_V4 else 0), (address, count)
