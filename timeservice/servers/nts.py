"""NTS in NTP server mode (RFC 8915 5), beside the NTP core: a request with
a cookie this server can open and an authenticator its key verifies gets
the NTP answer with the request's Unique Identifier and, sealed with the
client's server-to-client key, as many fresh cookies as it asked for; one
with a cookie it cannot open gets an NTS NAK, a Kiss-o'-Death ``NTSN``.
No answer is ever larger than its request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..nts.aead import Aead
from ..nts.cookies import CookieKeys
from ..wire import ntp, nts


@dataclass(frozen=True)
class NtsAnswer:
    """What an NTS request gets: `reply` (the answer, or a NAK when `nak`),
    or nothing (None) with the reason it is dropped."""

    reply: bytes | None
    nak: bool = False
    dropped: str = ""


class NtsResponder:
    """Answers NTS requests with the cookies `keys` seals and opens."""

    def __init__(self, keys: CookieKeys) -> None:
        self.keys = keys
        self.answered = 0  # authenticated answers, for the metrics
        self.naks = 0

    def answer(
        self, data: bytes, request: nts.Request, reply_to: Callable[[], bytes | None]
    ) -> NtsAnswer:
        """The answer to `request` (the NTS parts of `data`); `reply_to()`
        makes the 48-byte NTP answer, its transmit timestamp read then."""
        opened = self.keys.open(request.cookie)
        if opened is None:
            return self.nak(data, request)
        algorithm, c2s, s2c = opened
        try:
            Aead(c2s).open(request.nonce, request.ciphertext, request.authenticated)
        except ValueError:
            return self.nak(data, request)
        head = reply_to()
        if head is None:
            return NtsAnswer(None, dropped="not an NTP client request")
        associated = head + request.unique_id
        wanted = request.cookies_wanted
        for count in range(wanted, 0, -1):  # as many as fit in the request's size
            cookies = b"".join(
                nts.field(nts.COOKIE, self.keys.seal(algorithm, c2s, s2c))
                for _ in range(count)
            )
            nonce, sealed = Aead(s2c).seal(cookies, associated)
            reply = associated + nts.authenticator(nonce, sealed)
            if len(reply) <= len(data):
                self.answered += 1
                return NtsAnswer(reply)
        return NtsAnswer(None, dropped="an NTS request too small for its answer")

    def nak(self, data: bytes, request: nts.Request) -> NtsAnswer:
        """An NTS NAK: a Kiss-o'-Death NTSN with the Unique Identifier."""
        kiss = ntp.kiss_of_death(data, nts.NAK)
        if kiss is None:
            return NtsAnswer(None, dropped="not an NTP client request")
        self.naks += 1
        return NtsAnswer(kiss + request.unique_id, nak=True)
