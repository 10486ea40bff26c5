"""What a datagram can make the UDP servers do: one send path, decided by an
admission that sends nothing, from the address the client asked, within
limits a forger cannot multiply."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    bounded,
    free_port,
    ntp_port_of,
    one_line,
    port_of,
    replies,
    udp_socket,
)

from timeservice import client
from timeservice.host import capabilities
from timeservice.host.local import SERVED_PORTS, LocalAddresses
from timeservice.policy.access import AccessList
from timeservice.policy.sources import ANSWER, DROP, KISS, SourceLimits
from timeservice.programs import server as server_program
from timeservice.server import (
    DaytimeHandler,
    NtpHandler,
    NtpServer,
    TimeHandler,
    TimeServer,
)
from timeservice.transport.ancillary import (
    IP_PKTINFO,
    SO_TIMESTAMPNS,
    answer_from,
    is_wildcard,
    stamp_of,
)
from timeservice.transport.datagram import DatagramServer, Reply
from timeservice.wire import ntp

LOOPBACK_ONLY = AccessList.from_options(["127.0.0.0/8", "::1"], [])


def spoof(source_port: int, port: int, payload: bytes) -> None:
    """Send a UDP datagram to 127.0.0.1 `port` from 127.0.0.1 `source_port`,
    whoever holds that port (or none can: port 0). A raw socket: root only."""
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        pytest.skip("a forged source port needs a raw socket (root)")
    with raw:  # the kernel writes the IP header; checksum 0 is "none" in IPv4
        header = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0)
        raw.sendto(header + payload, ("127.0.0.1", 0))


class Recording:
    """Stands in for a datagram's Reply and keeps what is sent through it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple]] = []

    def sendto(self, data: bytes, address: tuple) -> int:
        self.sent.append((data, address))
        return len(data)


# Admission decides; it sends nothing and cannot fail


def kiss_at_once() -> SourceLimits:
    """One answer, then a kiss: no refill and nothing that leaks."""
    return SourceLimits(rate=0.0, burst=1, leak=0.0, kiss=True)


def test_admission_sends_nothing_and_the_loop_sends_the_kiss():
    with NtpServer(("127.0.0.1", 0), local_stratum=10, limits=kiss_at_once()) as server:
        reply = Recording()
        address = ("127.0.0.1", 40000)
        datagrams = [(ntp.request_packet(0), reply, 0) for _ in range(3)]
        assert server.admit(datagrams[0], address) is ANSWER
        assert server.admit(datagrams[1], address) is KISS  # over the limit
        assert reply.sent == []  # decided, nothing sent
        assert server.admit(datagrams[2], address) is DROP  # told a moment ago
    with NtpServer(("127.0.0.1", 0), local_stratum=10, limits=kiss_at_once()) as server:
        with udp_socket() as sock:
            for _ in range(2):
                sock.sendto(ntp.request_packet(0), server.server_address)
            bounded(server.handle_request)  # one wake-up: both
            assert ntp.Packet.unpack(sock.recv(512)).stratum == 10
            assert ntp.Packet.unpack(sock.recv(512)).reference_id == b"RATE"


def test_a_subclass_that_answers_anyway_leaves_no_kiss_for_the_next(serve):
    class Generous(NtpServer):
        """Answers 127.0.0.3 whatever its limit says (2.0.0 then sent the
        kiss decided for it to the next client refused)."""

        def admit(self, request, client_address):
            verdict = super().admit(request, client_address)
            return ANSWER if client_address[0] == "127.0.0.3" else verdict

    server = serve(Generous, NtpHandler, local_stratum=10, limits=kiss_at_once())
    with udp_socket("127.0.0.3") as generous, udp_socket("127.0.0.4") as other:
        for _ in range(3):
            generous.sendto(ntp.request_packet(0), server.server_address)
            assert ntp.Packet.unpack(generous.recv(512)).stratum == 10
        other.sendto(ntp.request_packet(0), server.server_address)
        assert ntp.Packet.unpack(other.recv(512)).stratum == 10  # its own answer
        other.sendto(ntp.request_packet(0), server.server_address)
        assert ntp.Packet.unpack(other.recv(512)).reference_id == b"RATE"
        assert replies(generous, quiet=0.05) == []


def test_a_datagram_from_port_0_is_dropped_first():
    with NtpServer(("127.0.0.1", 0), local_stratum=10) as server:
        datagram = (ntp.request_packet(0), Recording(), 0)
        assert server.admit(datagram, ("127.0.0.1", 0)) is DROP
    assert server.refused == {"low_source_port": 1}


def ntp_service(*options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "timeservice.server", "0", "--ntp", "0"]
        + ["--local-stratum", "10", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_forty_datagrams_from_port_0_do_not_stop_ntp():
    process = ntp_service()
    try:
        port = ntp_port_of(process)
        for _ in range(40):  # past the burst of 16: where the kiss was sent
            spoof(0, port, ntp.request_packet(0))
        sample = client.ask_ntp("127.0.0.1", port, timeout=TIMEOUT)
        assert abs(sample.offset) < 1
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err


def test_a_fault_in_admission_costs_the_next_datagram_nothing(serve, caplog):
    class Faulty(DatagramServer):
        def verify_request(self, request, client_address):
            if request[0] == b"bad":
                raise ValueError("a bug")
            return super().verify_request(request, client_address)

    server = serve(Faulty, TimeHandler)
    with udp_socket() as sock:
        sock.sendto(b"bad", server.server_address)
        sock.sendto(b"", server.server_address)
        assert len(sock.recv(16)) == 4
    [record] = [r for r in caplog.records if "a bug" in r.getMessage()]
    assert record.exc_info is None  # one line
    caplog.clear()


class RefusingSocket(socket.socket):
    """A UDP socket whose sends to one port fail, as a firewall's EPERM does."""

    refused_port = -1

    def sendto(self, data, *args):
        if args[-1][1] == self.refused_port:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return super().sendto(data, *args)

    def sendmsg(self, buffers, *args):
        if args[-1][1] == self.refused_port:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return super().sendmsg(buffers, *args)


def test_a_send_that_fails_costs_the_server_nothing(serving, caplog):
    server = NtpServer(
        ("127.0.0.1", 0), bind_and_activate=False, local_stratum=10, burst=1, rate=0
    )
    server.socket.close()
    server.socket = RefusingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    server.server_bind()
    server.server_activate()
    serving(server)
    with udp_socket() as refused, udp_socket("127.0.0.2") as probe:
        server.socket.refused_port = refused.getsockname()[1]
        for _ in range(6):  # an answer, then kisses: every send refused
            refused.sendto(ntp.request_packet(0), server.server_address)
        probe.sendto(ntp.request_packet(0), server.server_address)
        assert ntp.Packet.unpack(probe.recv(512)).stratum == 10
    assert "Operation not permitted" in caplog.text  # one line at debug level


# Replies leave from the address the client asked


@pytest.mark.skipif(
    not capabilities.DESTINATION_ADDRESS,
    reason="needs IP_PKTINFO and IPV6_PKTINFO (Linux)",
)
@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_server_answers_from_the_address_asked(serve, wildcard):
    ntp_server = serve(
        NtpServer, NtpHandler, wildcard, local_stratum=10, access=LOOPBACK_ONLY
    )
    time_server = serve(DatagramServer, TimeHandler, wildcard, access=LOOPBACK_ONLY)
    asked = ["127.0.0.1", "127.0.0.2", "127.0.3.4"] + (
        ["::1"] if ":" in wildcard else []
    )
    for host in asked:  # the clients' sockets are connected: only that address
        assert client.ask_ntp(host, port_of(ntp_server)).root_distance < 1
        assert client.ask_time(host, port_of(time_server), udp=True).error < 2


def test_where_the_address_is_not_asked_for_replies_go_as_the_kernel_sends(serve):
    server = serve(
        NtpServer, NtpHandler, "0.0.0.0", local_stratum=10, access=LOOPBACK_ONLY
    )
    assert client.ask_ntp("127.0.0.1", port_of(server)).root_distance < 1
    plain = serve(NtpServer, NtpHandler, local_stratum=10)  # not a wildcard
    assert not plain.destination_info
    assert client.ask_ntp("127.0.0.1", port_of(plain)).root_distance < 1


@pytest.mark.skipif(
    not capabilities.DESTINATION_ADDRESS,
    reason="needs IP_PKTINFO and IPV6_PKTINFO (Linux)",
)
def test_a_reply_sends_from_the_address_it_was_given():
    with udp_socket("0.0.0.0") as server_side, udp_socket("127.0.0.2") as client_side:
        info = struct.pack("@i4s4s", 0, socket.inet_aton("127.0.0.5"), bytes(4))
        reply = Reply(server_side, [(socket.IPPROTO_IP, IP_PKTINFO, info)])
        reply.sendto(b"hello", client_side.getsockname())
        data, (source, port) = client_side.recvfrom(16)
        assert (data, source) == (b"hello", "127.0.0.5")
        assert port == server_side.getsockname()[1]
        assert reply.getsockname() == server_side.getsockname()  # the socket's


V4 = (socket.IPPROTO_IP, IP_PKTINFO)
V6 = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)


def in6(address: str, interface: int) -> bytes:
    return struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, address), interface)


def in4(interface: int, local: str, header: str) -> bytes:
    return struct.pack(
        "@i4s4s", interface, socket.inet_aton(local), socket.inet_aton(header)
    )


@pytest.mark.parametrize(
    "kind, value, expected, unicast",
    [
        (  # the local address, chosen by routing; no interface, no header address
            V4,
            in4(3, "192.0.2.7", "192.0.2.7"),
            in4(0, "192.0.2.7", "0.0.0.0"),
            True,
        ),
        (V4, in4(3, "192.0.2.7", "192.0.2.255"), in4(0, "192.0.2.7", "0.0.0.0"), False),
        (
            V4,
            in4(1, "127.0.0.1", "255.255.255.255"),
            in4(0, "127.0.0.1", "0.0.0.0"),
            False,
        ),
        (V4, in4(1, "127.0.0.1", "224.0.0.1"), in4(0, "127.0.0.1", "0.0.0.0"), False),
        (V6, in6("2001:db8::7", 3), in6("2001:db8::7", 0), True),
        (V6, in6("::ffff:192.0.2.7", 1), in6("::ffff:192.0.2.7", 0), True),
        (V6, in6("fe80::7", 3), in6("fe80::7", 3), True),  # only on its interface
        (V6, in6("ff02::1", 3), in6("ff02::1", 0), False),
        (V6, in6("::ffff:255.255.255.255", 1), in6("::ffff:255.255.255.255", 0), False),
        (V6, in6("::ffff:224.0.0.1", 1), in6("::ffff:224.0.0.1", 0), False),
        (V4, b"short", None, True),
        (V6, b"short", None, True),
        ((socket.SOL_SOCKET, 35), bytes(16), None, True),
    ],
)
def test_a_reply_leaves_from_the_address_the_datagram_came_to(
    kind, value, expected, unicast
):
    info = answer_from([(*kind, value)])
    assert info == (None if expected is None else [(*kind, expected)], unicast)


def test_a_dual_stack_sockets_ipv4_client_is_told_by_both():
    broadcast = [(*V4, in4(1, "127.0.0.1", "127.255.255.255"))]
    broadcast.append((*V6, in6("::ffff:127.255.255.255", 1)))
    info, unicast = answer_from(broadcast)
    assert info == [(*V6, in6("::ffff:127.255.255.255", 0))] and not unicast


def test_ancillary_data_of_the_wrong_size_is_passed_over():
    assert stamp_of([(socket.SOL_SOCKET, SO_TIMESTAMPNS, b"short")]) is None

    class OneAddress(DatagramServer):
        remembered_addresses = 1

    with OneAddress(("127.0.0.1", 0), TimeHandler) as server:
        assert server.reply_for(((*V4, b"short"),)) is None
        for n in range(3):  # a new Reply for each address, the old forgotten
            value = struct.pack(
                "@i4s4s", 1, bytes([127, 0, 0, n]), bytes([127, 0, 0, n])
            )
            assert server.reply_for(((*V4, value),)).ancillary is not None
        assert server.reply_for.cache_info().currsize == 1


def test_a_wildcard_is_an_unspecified_address():
    assert is_wildcard(("0.0.0.0", 0)) and is_wildcard(("::", 0, 0, 0))
    assert not is_wildcard(("127.0.0.1", 0)) and not is_wildcard(("localhost", 0))


def test_local_addresses_are_the_loopback_and_those_a_socket_binds():
    local = LocalAddresses(remembered=2)
    assert "127.0.0.9" in local and "::1" in local and "::ffff:127.0.0.1" in local
    assert "192.0.2.1" not in local  # TEST-NET-1: on no host
    assert local.is_local.cache_info().currsize == 2


class NoPacketInfo(socket.socket):
    def setsockopt(self, level, option, value):
        if option in (IP_PKTINFO, socket.IPV6_RECVPKTINFO):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        super().setsockopt(level, option, value)


def test_without_the_address_asked_replies_go_as_the_kernel_sends(caplog, monkeypatch):
    monkeypatch.setattr(capabilities, "DESTINATION_ADDRESS", True)  # as on Linux
    server = DatagramServer(("0.0.0.0", 0), TimeHandler, bind_and_activate=False)
    with server:
        server.socket.close()
        server.socket = NoPacketInfo(socket.AF_INET, socket.SOCK_DGRAM)
        server.server_bind()
        assert not server.destination_info
        assert not caplog.text  # said once the port is served, not before
        server.server_activate()
    assert "cannot tell which address datagrams were sent to" in caplog.text
    assert "Protocol not available" in caplog.text


# A UDP port is one server's


def test_a_udp_port_in_use_cannot_be_taken(serve):
    first = serve(DatagramServer, TimeHandler)
    with pytest.raises(OSError) as raised:
        NtpServer(("127.0.0.1", port_of(first)))
    assert raised.value.errno == errno.EADDRINUSE


def test_time_and_ntp_on_one_port_is_one_line(capsys):
    port = str(free_port())
    assert server_program.main(["0", "--time", port, "--ntp", port, "-q"]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}" in err
    assert "in use" in err


@pytest.mark.slow
def test_a_second_process_cannot_take_the_ntp_port():
    first = ntp_service()
    try:
        port = str(ntp_port_of(first))
        second = subprocess.run(
            [sys.executable, "-m", "timeservice.server", "0", "--ntp", port],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1 port {port}" in one_line(second.stderr)
    finally:
        first.terminate()
        first.communicate(timeout=TIMEOUT)


# How much a forger can make the server send


def test_many_sources_get_no_more_kisses_than_the_server_sends_in_all(serve):
    policy = SourceLimits(rate=0.0, burst=1, leak=0.0, kiss=True)
    server = serve(NtpServer, NtpHandler, local_stratum=10, limits=policy)
    sources = [udp_socket(f"127.0.4.{n}") for n in range(1, 41)]
    with contextlib.ExitStack() as stack:
        for sock in sources:
            stack.enter_context(sock)
        for sock in sources:
            for _ in range(5):
                sock.sendto(ntp.request_packet(0), server.server_address)
        with udp_socket("127.0.0.2") as probe:  # after the flood, in order
            probe.sendto(ntp.request_packet(0), server.server_address)
            assert ntp.Packet.unpack(probe.recv(512)).stratum == 10
        got = [reply for sock in sources for reply in replies(sock, quiet=0.01)]
    kisses = sum(ntp.Packet.unpack(r).stratum == 0 for r in got)
    # 16 at once, 16 a second after: the flood took well under a second.
    assert 1 <= kisses <= 16 + 16
    assert len(got) - kisses == 40  # each source's one answer


# IPv6: an address's share, and a /64's


def answered_of(server, hosts) -> int:
    return sum(
        server.admit((ntp.request_packet(0), Recording(), 0), host) is ANSWER
        for host in hosts
    )


def test_the_hosts_of_one_ipv6_lan_each_get_their_own_share():
    exact = SourceLimits(rate=0.0, leak=0.0)  # no refill, nothing at random
    with NtpServer(("::1", 0), local_stratum=10, limits=exact) as server:
        lan = [(f"2001:db8::{n:x}", 40000, 0, 0) for n in range(1, 17)]
        assert answered_of(server, lan * 16) == 16 * 16  # each its own bucket
        assert server.statistics()["sources"] == 1  # the /64: one entry


def test_one_host_with_a_whole_slash_64_gets_its_addresses_and_the_shared_bucket():
    exact = SourceLimits(rate=0.0, leak=0.0)
    with NtpServer(("::1", 0), local_stratum=10, limits=exact) as server:
        rotating = [(f"2001:db8::{n:x}", 1, 0, 0) for n in range(1, 1001)]
        # A new address for every request: 16 addresses get a bucket each,
        # the rest share the /64's (16 at once).
        assert answered_of(server, rotating) == 16 + 16
        assert server.statistics()["sources"] == 1


def test_the_connections_of_one_ipv6_lan_are_limited_per_host_and_per_slash_64():
    with TimeServer(("::1", 0), max_per_host=2, max_per_network=8) as server:
        admitted = []
        pairs = [socket.socketpair() for _ in range(15)]
        try:
            for n, (ours, _) in enumerate(pairs):
                host = (f"2001:db8::{n // 3 + 1:x}", 1000 + n, 0, 0)
                admitted.append(server.verify_request(ours, host))
            # Three from each of five hosts: two each, until the /64 has 8.
            assert admitted == [True, True, False] * 4 + [False] * 3
            assert server.refused == {"per_host": 4, "per_network": 3}
            pairs.append(socket.socketpair())
            other = ("2001:db8:1::1", 1, 0, 0)  # another /64
            assert server.verify_request(pairs[-1][0], other)
        finally:
            for ours, theirs in pairs:
                server.shutdown_request(ours)
                theirs.close()


# Loops between services


@pytest.mark.parametrize("handler", [DaytimeHandler, TimeHandler])
def test_daytime_and_time_never_answer_a_daytime_or_time_answer(serve, handler):
    server = serve(DatagramServer, handler, burst=None)
    answered = {
        b"": True,  # rdate
        b"\n": True,  # nc -u
        ntp.request_packet(1): True,
        b"\xec\xd3\x1e\x80": False,  # a Time answer
        b"2026-12-01T10:15:42.117940+01:00\r\n": False,  # ours, a Daytime answer
        b"Tue Dec  1 10:15:42 2026\r\n": False,  # inetd's
        b"01 DEC 2026 10:15:42 UTC\r\n": False,  # xinetd's
    }
    with udp_socket() as sock:
        for datagram, expected in answered.items():
            sock.sendto(datagram, server.server_address)
            sock.sendto(b"", server.server_address)  # answered after it, in order
            got = [sock.recv(512), *replies(sock, quiet=0.05)]
            assert len(got) == (2 if expected else 1), datagram
    assert server.refused == {"loop": 4}


def test_ntp_answers_a_client_on_a_port_this_process_serves(serve):
    daytime = serve(DatagramServer, DaytimeHandler)
    ntp_server = serve(NtpServer, NtpHandler, local_stratum=10)
    datagram = (ntp.request_packet(0), Recording(), 0)
    assert ntp_server.admit(datagram, ("127.0.0.1", port_of(daytime))) is ANSWER


def test_the_ports_served_are_forgotten_when_a_server_closes():
    with DatagramServer(("127.0.0.1", 0), TimeHandler) as server:
        port = port_of(server)
        assert port in SERVED_PORTS.ports
    assert port not in SERVED_PORTS.ports


@pytest.mark.slow
def test_one_forged_datagram_starts_no_loop_between_daytime_and_time(serve):
    daytime = serve(DatagramServer, DaytimeHandler, burst=None)
    time_server = serve(DatagramServer, TimeHandler, burst=None)
    spoof(port_of(time_server), port_of(daytime), b"")  # "from" Time
    with udp_socket() as probe:  # answered after the forged one, in order
        probe.sendto(b"", daytime.server_address)
        assert probe.recv(512).endswith(b"\r\n")
        probe.sendto(b"", time_server.server_address)  # after Daytime's answer
        assert len(probe.recv(512)) == 4
    # Daytime answered the forged datagram; Time took that for what it is.
    assert time_server.refused == {"loop": 1}
    assert (daytime.answered, time_server.answered) == (2, 1)


# No read waits after a wake-up


def test_a_wake_up_with_no_datagram_behind_it_blocks_no_read(serving):
    """Two servers on one socket, as workers share one: both wake for each
    datagram and one reads it. 2.0.0's other read then waited for the next
    datagram, and its shutdown() with it."""
    first = serving(DatagramServer(("127.0.0.1", 0), TimeHandler, burst=None))
    shared = socket.socket(fileno=os.dup(first.socket.fileno()))
    second = serving(DatagramServer.on_socket(shared, TimeHandler, burst=None))
    with udp_socket() as sock:
        for _ in range(20):
            sock.sendto(b"", first.server_address)
            assert len(sock.recv(16)) == 4
    assert first.answered + second.answered == 20
    # The fixture's teardown shuts both down within its bound.


@pytest.mark.parametrize("server_class", [DatagramServer, NtpServer])
def test_a_read_with_nothing_waiting_fails_at_once(server_class):
    """What serve_forever() does after a wake-up that had nothing behind it:
    2.0.0's first read of each wake-up waited for the next datagram."""
    handler = TimeHandler if server_class is DatagramServer else NtpHandler
    with server_class(("127.0.0.1", 0), handler) as server:
        failed: list[OSError] = []

        def read() -> None:
            try:
                server.get_request()
            except OSError as exc:
                failed.append(exc)

        bounded(read)
        assert isinstance(failed[0], BlockingIOError)


# The serving loop: socketserver's contract, on a poll object of its own


@pytest.mark.parametrize("server_class", [NtpServer, TimeServer])
def test_a_shutdown_asked_before_the_loop_starts_ends_it_at_once(server_class):
    """As socketserver's: a shutdown() that comes before serve_forever()
    (a Ctrl-C while a program starts) is not forgotten when it starts."""
    import threading

    with server_class(("127.0.0.1", 0)) as server:
        stopping = threading.Thread(target=server.shutdown)
        stopping.start()
        stopping.join(0.1)  # it asks, then waits for a loop to end
        assert stopping.is_alive()
        serving = threading.Thread(target=server.serve_forever, args=(0.5,))
        serving.start()
        serving.join(TIMEOUT)
        stopping.join(TIMEOUT)
        assert not serving.is_alive() and not stopping.is_alive()
        # And a loop started again serves, until the next shutdown().
        serving = threading.Thread(target=server.serve_forever, args=(0.5,))
        serving.start()
        assert serving.is_alive()
        server.shutdown()
        serving.join(TIMEOUT)
        assert not serving.is_alive()
