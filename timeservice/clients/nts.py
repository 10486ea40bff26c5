"""Asking with Network Time Security (RFC 8915): a Key Establishment over
TLS 1.3, then NTP requests authenticated with the keys it gave, each with a
cookie never sent before. A reply that does not authenticate is no time.

The cryptography comes from the ``nts`` extra (timeservice.nts), loaded only
when NTS is asked for: without it, nts.Unavailable says in one line what to
install.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..wire import ntp, ntp_checks, nts
from .line import DEFAULT_TIMEOUT
from .offset import Sample
from .standard import ntp_exchange

MAX_KE_ANSWER = 65536  # eight cookies and a few records are a kilobyte
UNIQUE_ID_BYTES = 32


@dataclass
class NtsSession:
    """What a Key Establishment gave: where to send NTP, the AEAD algorithm,
    the two keys, and the cookies not yet used (each goes out once)."""

    host: str  # the KE server's, named as the certificate names it
    ntp_host: str
    ntp_port: int
    aead: int
    c2s: bytes
    s2c: bytes
    cookies: list[bytes] = field(default_factory=list)


def establish(
    host: str,
    port: int = nts.KE_PORT,
    *,
    ca: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> NtsSession:
    """NTS Key Establishment with `host`: a TLS 1.3 handshake whose
    certificate must be trusted (`ca`, a PEM file, or the system's) and name
    `host`, the request, the server's answer. nts.NtsError for an answer
    that cannot be used; OSError, TimeoutError and the TLS layer's TlsError
    (named in the message) for the rest."""
    from ..nts import require

    require()
    from ..nts import tls

    deadline = time.monotonic() + timeout
    context = tls.client_context(ca)
    sock = socket.create_connection((host, port), timeout)
    try:
        connection = tls.connect(context, sock, host, deadline)
    except BaseException:
        sock.close()
        raise
    try:
        tls.send(connection, deadline, nts.client_request())
        received = b""
        while True:
            chunk = tls.receive(connection, deadline, 4096)
            if not chunk:
                break
            received += chunk
            records, _ = nts.split_records(received)
            if nts.ke_message_done(records) or len(received) > MAX_KE_ANSWER:
                break
        records, _ = nts.split_records(received)
        answer = nts.read_ke_response(records, (nts.AES_SIV_CMAC_256,))
        c2s, s2c = tls.export_keys(connection, answer.aead)
    finally:
        tls.close(connection, deadline)
    return NtsSession(
        host,
        answer.server or host,
        answer.port or ntp.DEFAULT_PORT,
        answer.aead,
        c2s,
        s2c,
        list(answer.cookies),
    )


def ask_nts_once(
    session: NtsSession,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_distance: float = ntp.MAX_DISTANCE,
) -> Sample:
    """One authenticated NTP exchange in `session`: its next cookie (gone
    from the session whatever happens), placeholders for as many as it
    needs to hold eight again, and the reply checked as an NTP client
    checks one, then authenticated; the new cookies join the session.
    nts.NtsError for a NAK or a reply that does not authenticate."""
    from ..nts.aead import Aead

    if not session.cookies:
        raise nts.NtsError("no cookie left: a new Key Establishment is needed")
    cookie = session.cookies.pop(0)  # never sent twice
    unique = nts.field(nts.UNIQUE_IDENTIFIER, os.urandom(UNIQUE_ID_BYTES))
    wanted = nts.COOKIES - len(session.cookies)
    client = Aead(session.c2s)

    def make_request(t1: int) -> bytes:
        packet = ntp.request_packet(t1) + unique + nts.field(nts.COOKIE, cookie)
        placeholder = nts.field(nts.COOKIE_PLACEHOLDER, bytes(len(cookie)))
        packet += placeholder * (wanted - 1)
        nonce, sealed = client.seal(b"", packet)
        return packet + nts.authenticator(nonce, sealed)

    def check(data: bytes, request: bytes) -> ntp.Packet:
        fields = nts.read_fields(data)
        ids = [f for f in fields if f.type == nts.UNIQUE_IDENTIFIER]
        if len(ids) != 1 or data[ids[0].offset : ids[0].offset + len(unique)] != unique:
            raise nts.NtsError("the reply does not carry this request's identifier")
        reply = ntp.Packet.unpack(data)
        if reply.stratum == 0 and reply.reference_id == nts.NAK:
            raise nts.NtsError("the server sent an NTS NAK: it cannot open our cookie")
        last = fields[-1] if fields else None
        if last is None or last.type != nts.AUTHENTICATOR:
            raise nts.NtsError("the reply is not authenticated")
        nonce, sealed = nts.read_authenticator(last.body)
        try:
            inside = Aead(session.s2c).open(nonce, sealed, data[: last.offset])
        except ValueError:
            raise nts.NtsError("the reply does not authenticate") from None
        checked = ntp_checks.check_reply(data, request, max_distance)
        for new in nts.read_fields(inside, start=0):
            if new.type == nts.COOKIE:
                session.cookies.append(new.body)
        return checked

    def checked(data: bytes, request: bytes) -> ntp.Packet:
        try:
            return check(data, request)
        except ValueError as exc:  # fields that cannot be read
            raise nts.NtsError(f"the reply cannot be read: {exc}") from None

    return ntp_exchange(
        session.ntp_host, session.ntp_port, make_request, checked, timeout
    )


def ask_nts(
    host: str,
    port: int = nts.KE_PORT,
    *,
    ca: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_distance: float = ntp.MAX_DISTANCE,
) -> Sample:
    """Ask an NTS server once, as ask_ntp() asks an NTP server: a Key
    Establishment with `host` at `port` (the KE port), then one
    authenticated exchange with the NTP server it names."""
    session = establish(host, port, ca=ca, timeout=timeout)
    return ask_nts_once(session, timeout=timeout, max_distance=max_distance)
