"""NTS end to end between this project's client and server, over loopback:
authenticated time, fresh cookies, NAKs, and every answer a client must
refuse (a tampered reply, another request's identifier, a certificate not
trusted, not for the host, expired; a KE server with no AEAD in common)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from conftest import NTS_EXTRA, TIMEOUT, port_of, udp_socket

from timeservice.client import ask_ntp
from timeservice.server import NtpHandler, NtpServer
from timeservice.wire import ntp, nts

pytestmark = pytest.mark.skipif(
    not NTS_EXTRA, reason="needs the nts extra: pip install 'timeservice[nts]'"
)

if NTS_EXTRA:
    from timeservice.clients.nts import ask_nts, ask_nts_once, establish
    from timeservice.nts import TlsError
    from timeservice.nts import tls as nts_tls
    from timeservice.nts.cookies import CookieKeys
    from timeservice.servers.nts import NtsResponder
    from timeservice.servers.ntske import KeServer


if NTS_EXTRA:

    class WatchedKeServer(KeServer):
        """A KE server that says when it has counted a failed exchange."""

        def __init__(self, *args, **kwargs) -> None:
            self.failure = threading.Event()
            super().__init__(*args, **kwargs)

        def failed(self, cause: str, client_address, why: object) -> None:
            super().failed(cause, client_address, why)
            self.failure.set()


@pytest.fixture
def nts_pair(serve, lab):
    """Start an NTP server that answers NTS and its KE server (certificate
    and key as given, the lab's by default): the KE server."""

    def start(cert: str = lab.cert, key: str = lab.key, **ke_settings) -> KeServer:
        keys = CookieKeys.new()
        ntp_server = serve(
            NtpServer,
            NtpHandler,
            local_stratum=10,
            upstream=None,
            burst=None,
            nts=NtsResponder(keys),
        )
        context = nts_tls.server_context(cert, key)
        return serve(
            WatchedKeServer,
            None,
            tls_context=context,
            cookies=keys,
            ntp_port=port_of(ntp_server),
            **ke_settings,
        )

    return start


def test_a_client_gets_authenticated_time_and_a_fresh_cookie_each_time(nts_pair, lab):
    ke = nts_pair()
    session = establish("127.0.0.1", port_of(ke), ca=lab.ca)
    assert session.aead == nts.AES_SIV_CMAC_256 and len(session.cookies) == 8
    seen = set(session.cookies)
    for _ in range(10):
        sample = ask_nts_once(session, timeout=TIMEOUT)
        assert abs(sample.offset) <= sample.error  # one machine's clock
        assert len(session.cookies) == 8  # one used, one came back
        assert not seen & set(session.cookies[-1:])  # never one seen before
        seen |= set(session.cookies)
    assert ke.exchanges == 1


def test_the_name_and_the_address_are_checked_against_the_certificate(nts_pair, lab):
    port = port_of(nts_pair())
    assert ask_nts("localhost", port, ca=lab.ca).error < 1  # the DNS name it carries
    wrong = nts_pair(cert=lab.wrong_name)
    with pytest.raises(TlsError, match="not for 127.0.0.1"):
        establish("127.0.0.1", port_of(wrong), ca=lab.ca)


@pytest.mark.parametrize(
    "which, words",
    [
        ("expired", "certificate has expired"),
        ("self_signed", "self-signed certificate"),
        ("other_ca", "certificate verify failed"),
    ],
)
def test_a_certificate_the_client_cannot_trust_is_one_line(nts_pair, lab, which, words):
    if which == "other_ca":  # trusted by the client: the system's, not the lab's
        ke, ca = nts_pair(), None
    elif which == "self_signed":
        ke, ca = nts_pair(cert=lab.self_signed, key=lab.self_signed_key), lab.ca
    else:
        ke, ca = nts_pair(cert=lab.expired), lab.ca
    with pytest.raises(TlsError, match=words) as refused:
        establish("127.0.0.1", port_of(ke), ca=ca)
    assert "\n" not in str(refused.value)
    assert ke.failure.wait(TIMEOUT)
    assert ke.refused["handshake"] == 1  # the server counts what failed


def test_a_plain_ntp_client_is_still_answered_on_the_same_port(serve):
    server = serve(
        NtpServer, NtpHandler, local_stratum=10, nts=NtsResponder(CookieKeys.new())
    )
    assert ask_ntp("127.0.0.1", port_of(server)).error < 1
    with udp_socket() as sock:  # extension fields it does not know: ignored
        unknown = ntp.request_packet(1) + nts.field(0x7777, b"hello")
        sock.sendto(unknown, server.server_address)
        assert len(sock.recv(2048)) == ntp.PACKET_BYTES


@contextlib.contextmanager
def meddler(
    target: tuple, change: Callable[[bytes], bytes]
) -> Iterator[tuple[str, int]]:
    """A UDP relay to `target` that passes requests on and changes each
    reply with `change` on its way back; its address."""
    front = udp_socket()
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.settimeout(TIMEOUT)
    stop = threading.Event()

    def relay() -> None:
        front.settimeout(0.05)
        for _ in range(10_000):
            if stop.is_set():
                return
            try:
                request, client = front.recvfrom(4096)
            except TimeoutError:
                continue
            back.sendto(request, target)
            front.sendto(change(back.recv(4096)), client)

    thread = threading.Thread(target=relay)
    thread.start()
    try:
        yield front.getsockname()
    finally:
        stop.set()
        thread.join(TIMEOUT)
        front.close()
        back.close()


def flip_last(reply: bytes) -> bytes:
    return reply[:-1] + bytes([reply[-1] ^ 1])


def another_identifier(reply: bytes) -> bytes:
    fields = nts.read_fields(reply)
    uid = next(f for f in fields if f.type == nts.UNIQUE_IDENTIFIER)
    start = uid.offset + 4
    return reply[:start] + bytes(len(uid.body)) + reply[start + len(uid.body) :]


def a_later_transmit(reply: bytes) -> bytes:
    return (
        reply[:40] + (int.from_bytes(reply[40:48]) + (1 << 32)).to_bytes(8) + reply[48:]
    )


@pytest.mark.parametrize(
    "change, problem",
    [
        (flip_last, "does not authenticate"),
        (a_later_transmit, "does not authenticate"),  # an hour moved: not time
        (another_identifier, "identifier"),
        (lambda reply: reply[:48], "identifier"),  # the NTS fields stripped
    ],
    ids=["tampered", "time moved", "another request's", "stripped"],
)
def test_a_reply_that_does_not_authenticate_is_no_time(nts_pair, lab, change, problem):
    session = establish("127.0.0.1", port_of(nts_pair()), ca=lab.ca)
    ntp_address = (session.ntp_host, session.ntp_port)
    with meddler(ntp_address, change) as (host, port):
        session.ntp_host, session.ntp_port = host, port
        with pytest.raises(nts.NtsError, match=problem):
            ask_nts_once(session, timeout=TIMEOUT)


def test_a_cookie_the_server_cannot_open_gets_a_nak(nts_pair, lab):
    first = establish("127.0.0.1", port_of(nts_pair()), ca=lab.ca)
    other = establish("127.0.0.1", port_of(nts_pair()), ca=lab.ca)
    first.cookies = other.cookies  # the other server's: this one cannot open them
    with pytest.raises(nts.NtsError, match="NAK"):
        ask_nts_once(first, timeout=TIMEOUT)


def test_a_reply_is_never_larger_than_its_request(nts_pair, lab):
    session = establish("127.0.0.1", port_of(nts_pair()), ca=lab.ca)
    sizes = []
    with meddler(
        (session.ntp_host, session.ntp_port),
        lambda reply: sizes.append(len(reply)) or reply,
    ) as (host, port):
        session.ntp_host, session.ntp_port = host, port
        for _ in range(3):
            session.cookies = session.cookies[:5]  # asks for 4 with placeholders
            ask_nts_once(session, timeout=TIMEOUT)
    request = 48 + 36 + 4 * (4 + 104) + 40
    assert sizes and all(size <= request for size in sizes)


def test_a_ke_server_that_offers_no_aead_the_client_speaks_is_refused(serve, lab):
    from timeservice.servers.ntske import KeHandler

    class Sixteen(KeHandler):
        """Answers every request with AEAD 16, which the client never offered."""

        def answer(self, connection, deadline):
            super().answer(connection, deadline)  # the request read, as a server does
            return nts.server_response(16, [bytes(104)] * 8)

    ke = serve(
        KeServer,
        Sixteen,
        tls_context=nts_tls.server_context(lab.cert, lab.key),
        cookies=CookieKeys.new(),
    )
    with pytest.raises(nts.NtsError, match="no AEAD algorithm this client speaks"):
        establish("127.0.0.1", port_of(ke), ca=lab.ca)


def test_a_client_that_never_finishes_its_handshake_is_cut_off(nts_pair, lab):
    ke = nts_pair(exchange_seconds=0.3)
    with socket.create_connection(ke.server_address, timeout=TIMEOUT) as silent:
        assert silent.recv(1) == b""  # closed by the server, not left waiting
    assert ke.failure.wait(TIMEOUT)
    assert ke.refused["ke_timeout"] + ke.refused["handshake"] == 1


def test_the_metrics_count_exchanges_authenticated_requests_and_naks(serve, lab):
    from timeservice.operations.metrics import collect, render

    keys = CookieKeys.new()
    ntp_server = serve(
        NtpServer, NtpHandler, local_stratum=10, upstream=None, nts=NtsResponder(keys)
    )
    ke = serve(
        KeServer,
        None,
        tls_context=nts_tls.server_context(lab.cert, lab.key),
        cookies=keys,
        ntp_port=port_of(ntp_server),
    )
    session = establish("127.0.0.1", port_of(ke), ca=lab.ca)
    ask_nts_once(session, timeout=TIMEOUT)
    other = establish("127.0.0.1", port_of(nts_pair_of(serve, lab)), ca=lab.ca)
    session.cookies = other.cookies  # another server's: a NAK
    with pytest.raises(nts.NtsError, match="NAK"):
        ask_nts_once(session, timeout=TIMEOUT)
    text = render(collect([ntp_server, ke]))
    for result in ("authenticated", "nak"):  # labels in order
        labels = f'protocol="ntp",result="{result}",transport="udp"'
        assert f"timeservice_nts_requests_total{{{labels}}} 1" in text, text
    ke_labels = 'protocol="nts-ke",transport="tcp"'
    assert f"timeservice_nts_ke_exchanges_total{{{ke_labels}}} 1" in text


def nts_pair_of(serve, lab) -> KeServer:
    """Another server's KE, with keys of its own."""
    keys = CookieKeys.new()
    other_ntp = serve(
        NtpServer, NtpHandler, local_stratum=10, upstream=None, nts=NtsResponder(keys)
    )
    return serve(
        KeServer,
        None,
        tls_context=nts_tls.server_context(lab.cert, lab.key),
        cookies=keys,
        ntp_port=port_of(other_ntp),
    )
