"""TLS 1.3 for NTS Key Establishment, with pyOpenSSL: the server's and the
client's contexts (ALPN ``ntske/1``, TLS 1.3 only), every read and write
within a deadline on a non-blocking socket, the host name checked against
the certificate (pyOpenSSL checks none), and the keys exported (RFC 8446's
exporter, RFC 8915 5.1).

pyOpenSSL 26.2 and later refuse changes to a Context that has made a
connection: a new certificate means a new Context (server_context()).
"""

from __future__ import annotations

import functools
import ipaddress
import select
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from OpenSSL import SSL, crypto

from ..wire import nts
from . import TlsError

T = TypeVar("T")


def server_context(certificate: str, key: str) -> SSL.Context:
    """A server's context: TLS 1.3 only, the certificate chain and its key
    from PEM files, ALPN ``ntske/1`` or no connection. OSError or TlsError
    if the files cannot be read or do not match."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    try:
        context.use_certificate_chain_file(certificate)
        context.use_privatekey_file(key)
        context.check_privatekey()
    except SSL.Error as exc:
        raise TlsError(f"{certificate}, {key}: {reason(exc)}") from None

    def choose(connection: SSL.Connection, offered: list[bytes]) -> Any:
        return nts.ALPN if nts.ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    context.set_alpn_select_callback(choose)
    return context


def client_context(ca: str | None = None) -> SSL.Context:
    """A client's context: TLS 1.3 only, ALPN ``ntske/1``, the peer's chain
    verified against `ca` (a PEM file of certificates) or the system's."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_verify(SSL.VERIFY_PEER, note_verdict)
    if ca is None:
        context.set_default_verify_paths()
    else:
        try:
            context.load_verify_locations(ca)
        except SSL.Error as exc:
            raise TlsError(f"{ca}: {reason(exc)}") from None
    context.set_alpn_protos([nts.ALPN])
    return context


def reason(exc: Exception) -> str:
    """What OpenSSL said, in words, without its error queue's codes."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args and isinstance(args[-1], tuple):
        return str(args[-1][-1])
    return str(exc) or type(exc).__name__


def within(connection: SSL.Connection, deadline: float, call: Callable[[], T]) -> T:
    """`call` on a non-blocking connection, again each time it needs the
    socket readable or writable, until `deadline` (monotonic): TimeoutError
    after it."""
    descriptor = connection.fileno()
    wanted: tuple[list[Any], list[Any]]
    for _ in range(100_000):  # a bound; the deadline ends it first
        try:
            return call()
        except SSL.WantReadError:
            wanted = ([descriptor], [])
        except SSL.WantWriteError:
            wanted = ([], [descriptor])
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        ready = select.select(*wanted, [], left)
        if not any(ready):
            raise TimeoutError("timed out")
    raise TimeoutError("timed out")


def handshake(connection: SSL.Connection, deadline: float) -> None:
    """The TLS handshake, within `deadline`; TlsError if it fails (no
    common version or protocol, a certificate not trusted)."""
    try:
        within(connection, deadline, connection.do_handshake)
    except SSL.Error as exc:
        raise TlsError(describe_failure(connection, exc)) from None
    if connection.get_alpn_proto_negotiated() != nts.ALPN:
        raise TlsError("the peer does not speak NTS-KE (ALPN ntske/1)")


# OpenSSL's verify codes a client meets most, in its words (x509_vfy.h).
VERIFY_WORDS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


def note_verdict(
    connection: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int
) -> bool:
    """The verify callback: keep OpenSSL's verdict, the first failure's
    code, on the connection (its app data, a list), for the message."""
    found = connection.get_app_data()
    if not ok and isinstance(found, list) and not found:
        found.append(code)
    return bool(ok)


def describe_failure(connection: SSL.Connection, exc: Exception) -> str:
    """Why a handshake failed, for people: the certificate's verdict where
    there is one."""
    text = reason(exc)
    found = connection.get_app_data()
    if "certificate verify failed" in text and isinstance(found, list) and found:
        words = VERIFY_WORDS.get(found[0], f"OpenSSL's verify code {found[0]}")
        return f"certificate verify failed: {words}"
    return text


def receive(connection: SSL.Connection, deadline: float, most: int) -> bytes:
    """The next bytes, at most `most`; b"" at the peer's close."""
    try:
        return within(connection, deadline, lambda: connection.recv(most))
    except SSL.ZeroReturnError:
        return b""
    except SSL.SysCallError as exc:
        if exc.args and exc.args[0] == -1:  # EOF without close_notify
            return b""
        raise TlsError(f"connection broken: {reason(exc)}") from None
    except SSL.Error as exc:
        raise TlsError(reason(exc)) from None


def send(connection: SSL.Connection, deadline: float, data: bytes) -> None:
    """All of `data`, within `deadline`."""
    view = memoryview(data)
    while view:
        try:
            sent = within(
                connection, deadline, functools.partial(connection.send, view)
            )
        except SSL.Error as exc:
            raise TlsError(reason(exc)) from None
        view = view[sent:]


def close(connection: SSL.Connection, deadline: float) -> None:
    """Say close_notify (once; the peer's is not awaited), then close."""
    try:
        within(connection, deadline, connection.shutdown)
    except (SSL.Error, OSError):
        pass
    connection.close()  # the socket's: pyOpenSSL passes it on


def export_keys(connection: SSL.Connection, aead: int) -> tuple[bytes, bytes]:
    """The client-to-server and server-to-client keys of `aead` (RFC 8915 5.1)."""
    length = nts.KEY_BYTES[aead]
    return tuple(  # type: ignore[return-value]
        connection.export_keying_material(
            nts.EXPORTER_LABEL, length, nts.exporter_context(aead, direction)
        )
        for direction in (False, True)
    )


def check_host(connection: SSL.Connection, host: str) -> None:
    """TlsError unless the peer's certificate names `host`: a DNS name in its
    subject alternative names (a wildcard for one leftmost label), or an IP
    address there for an address; pyOpenSSL leaves this to its caller."""
    peer = connection.get_peer_certificate()
    if peer is None:
        raise TlsError("the server sent no certificate")
    certificate = peer.to_cryptography()
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        raise TlsError("the certificate has no subject alternative name") from None
    try:
        address: Any = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        address = None
    shown: list[Any]
    if address is not None:
        shown = names.get_values_for_type(x509.IPAddress)
        if address in shown:
            return
    else:
        shown = [name.lower() for name in names.get_values_for_type(x509.DNSName)]
        if any(name_matches(name, host.lower().rstrip(".")) for name in shown):
            return
    listed = ", ".join(map(str, shown)) or "nothing of that kind"
    raise TlsError(f"the certificate is not for {host} (it names {listed})")


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125: a DNS name, or a wildcard for exactly one leftmost label."""
    if not pattern.startswith("*."):
        return pattern == host
    first, dot, rest = host.partition(".")
    return bool(first) and bool(dot) and rest == pattern[2:]


def exchange_at_once(sock: socket.socket) -> None:
    """Non-blocking, and each write sent at once: TLS 1.3 writes its
    Finished and the records after it separately, and Nagle's algorithm
    would hold the second until the peer's delayed ACK (40 ms on Linux;
    every Key Establishment with chronyd took 44 ms so)."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(
    context: SSL.Context, sock: socket.socket, host: str, deadline: float
) -> SSL.Connection:
    """TLS as a client over a connected socket: the handshake, the chain
    verified, the certificate checked to name `host`; TlsError if not."""
    exchange_at_once(sock)
    connection = SSL.Connection(context, sock)
    connection.set_app_data([])  # note_verdict()'s
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        connection.set_tlsext_host_name(host.encode("idna"))  # SNI, for names
    connection.set_connect_state()
    handshake(connection, deadline)
    check_host(connection, host)
    return connection


def accept(
    context: SSL.Context, sock: socket.socket, deadline: float
) -> SSL.Connection:
    """TLS as a server over an accepted socket: the handshake, within
    `deadline`; TlsError if it fails."""
    exchange_at_once(sock)
    connection = SSL.Connection(context, sock)
    connection.set_accept_state()
    handshake(connection, deadline)
    return connection
