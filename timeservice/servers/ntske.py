"""NTS Key Establishment (RFC 8915 4): a TLS 1.3 server on TCP (4460 is the
standard port) that hands each client the AEAD algorithm, its keys (from
TLS's exporter) sealed in eight cookies, and where to send NTP.

A handshake costs CPU, so the connections are capped in all and per host
as the line protocol's are, by the same registry, and each exchange, TLS
and records, has `exchange_seconds` in all. A failed exchange is a refusal
(handshake, ke_request, ke_timeout), logged in the summarised form every
refusal has.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import time
from typing import Any

from ..nts import tls
from ..nts.cookies import CookieKeys
from ..transport.registry import abort
from ..transport.stream import StreamServer
from ..wire import nts
from ..wire.ntp import DEFAULT_PORT as NTP_PORT

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024  # a KE request is tens of bytes


class KeHandler(socketserver.BaseRequestHandler):
    """One NTS-KE exchange: the handshake, the client's records, the answer,
    close_notify."""

    server: KeServer
    protocol = "nts-ke"

    def setup(self) -> None:
        """Be tracked by the server, which cuts an exchange that runs over."""
        self.requests = 0  # answered: the registry moves the deadline by it
        self.server.track(self)

    def handle(self) -> None:
        """The exchange, within its time; a failure is counted and logged."""
        deadline = time.monotonic() + self.server.exchange_seconds
        server = self.server
        try:
            connection = tls.accept(server.tls_context, self.request, deadline)
        except (tls.TlsError, OSError) as exc:
            server.failed("handshake", self.client_address, exc)
            return
        except TimeoutError:
            server.failed("ke_timeout", self.client_address, "timed out")
            return
        try:
            answer = self.answer(connection, deadline)
            tls.send(connection, deadline, answer)
        except (tls.TlsError, OSError) as exc:
            server.failed("ke_request", self.client_address, exc)
        except TimeoutError:
            server.failed("ke_timeout", self.client_address, "timed out")
        else:
            self.requests = 1
            server.exchanges += 1
        finally:
            tls.close(connection, time.monotonic() + 0.1)

    def answer(self, connection: Any, deadline: float) -> bytes:
        """The records that answer the client's, once they are all in."""
        received = b""
        while True:
            chunk = tls.receive(connection, deadline, 4096)
            if not chunk:
                raise tls.TlsError("the client closed before End of Message")
            received += chunk
            if len(received) > MAX_REQUEST_BYTES:
                return nts.error_response(nts.BAD_REQUEST)
            records, _ = nts.split_records(received)
            if nts.ke_message_done(records):
                break
        try:
            request = nts.read_ke_request(records)
        except nts.KeError as exc:
            logger.debug("%s: %s", self.client_address, exc)
            return nts.error_response(exc.code)
        aead = next((a for a in request.aeads if a in nts.KEY_BYTES), None)
        if nts.NTPV4 not in request.protocols or aead is None:
            return nts.server_response(None, [])
        c2s, s2c = tls.export_keys(connection, aead)
        keys = self.server.cookies
        assert keys is not None  # the server refuses to start without
        cookies = [keys.seal(aead, c2s, s2c) for _ in range(nts.COOKIES)]
        port = self.server.ntp_port
        return nts.server_response(
            aead,
            cookies,
            port=None if port in (None, NTP_PORT) else port,
            server=self.server.ntp_server,
        )

    def expire(self, cause: str, grace: float, first: bool = True) -> None:
        """Cut the exchange short (its time is over, or the server stops):
        the socket's shutdown wakes the wait."""
        if first:
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            abort(self.request)


class KeServer(StreamServer):
    """An NTS-KE server: TLS 1.3 with the certificate chain and key of
    `tls_context` (nts.tls.server_context()), cookies sealed with `cookies`
    (a CookieKeys), clients sent to NTP at `ntp_server` (None: this host)
    and `ntp_port` (None or 123: the standard port). Settings of its own:
    tls_context, cookies, ntp_server, ntp_port, exchange_seconds; and the
    registry's caps, which default lower than the line protocol's: 64
    exchanges at once, 8 from one address."""

    settings: tuple[str, ...] = (
        "tls_context",
        "cookies",
        "ntp_server",
        "ntp_port",
        "exchange_seconds",
    )
    tls_context: Any = None
    cookies: CookieKeys | None = None
    ntp_server: str | None = None
    ntp_port: int | None = None
    exchange_seconds = 5.0
    max_connections = 64
    max_per_host: int | None = 8
    max_per_network: int | None = 32
    idle_timeout = 10.0  # the registry's cut, should a handler not see its own

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[KeHandler] = KeHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.exchanges = 0  # exchanges that ended with cookies sent
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        if self.tls_context is None or self.cookies is None:
            self.server_close()
            raise ValueError("an NTS-KE server needs tls_context and cookies")

    def statistics(self) -> dict[str, Any]:
        """The registry's counts, and the exchanges that ended with cookies
        sent (a failed one is a refusal: handshake, ke_request, ke_timeout)."""
        counts = super().statistics()
        counts["exchanges"] = self.exchanges
        return counts

    def failed(self, cause: str, client_address: Any, why: object) -> None:
        """An exchange that failed: counted and logged as a refusal."""
        logger.debug("%s: NTS-KE: %s", client_address, why)
        self.count_refusal(cause, client_address)
