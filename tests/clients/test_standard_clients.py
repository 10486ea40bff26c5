"""Asking Daytime, Time and NTP: what the client reads and what it refuses."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import TIMEOUT, oneshot_server, port_of, reply_to, udp_socket

from timeservice import client
from timeservice.server import NtpHandler, NtpServer
from timeservice.wire import ntp, rfc868
from timeservice.wire.errors import ReplyError

S = 1_000_000_000


def test_an_unsynchronised_server_is_one_clear_error(serve):
    # A kernel that cannot be read and no local stratum: unsynchronised.
    server = serve(NtpServer, NtpHandler, kernel_state=lambda: None, upstream=None)
    with pytest.raises(ntp.NotSynchronised, match="not synchronised"):
        client.ask_ntp("127.0.0.1", port_of(server))


def test_the_client_reads_an_eight_byte_time_reply_as_rdate_does():
    now = int(time.time())
    with oneshot_server(rfc868.encode(now) + bytes(4)) as port:  # inetutils-inetd
        sample = client.ask_time("127.0.0.1", port)
    assert sample.ts_ns == now * S


def test_the_client_passes_over_a_stray_datagram():
    with udp_socket() as fake:

        def answer():
            request, peer = fake.recvfrom(512)
            fake.sendto(b"stray", peer)
            fake.sendto(reply_to(request, stratum=4, receive=2 << 32), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        sample = client.ask_ntp("127.0.0.1", fake.getsockname()[1], timeout=TIMEOUT)
        thread.join(TIMEOUT)
    assert sample.t3_ns is not None


def test_a_receive_time_on_another_clock_is_passed_over():
    """A server whose T3 - T2 is longer than the whole round trip has its
    receive time from another clock: its transmit time alone is used."""
    with udp_socket() as fake:

        def answer():
            request, peer = fake.recvfrom(512)
            now = time.time_ns()
            fields = {
                "receive": ntp.to_timestamp(now - 50_000_000),  # 50 ms before
                "transmit": ntp.to_timestamp(now),
            }
            fake.sendto(reply_to(request, **fields), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        sample = client.ask_ntp("127.0.0.1", fake.getsockname()[1], timeout=TIMEOUT)
        thread.join(TIMEOUT)
    assert sample.t3_ns is None  # read as any server's answer
    assert 0 < sample.delay_ns == sample.elapsed_ns
    assert abs(sample.offset) <= sample.error  # one machine's clock


@pytest.mark.parametrize(
    "reply, ask, problem",
    [
        (b"", client.ask_daytime, "server sent no time"),
        (b"\x00\x01\x02", client.ask_time, "a Time reply is 4 bytes, not 3"),
        (b"", client.ask_time, "server sent no time"),
    ],
)
def test_the_client_refuses_a_short_answer(reply, ask, problem):
    with oneshot_server(reply) as port:
        with pytest.raises(ReplyError, match=problem):
            ask("127.0.0.1", port)
