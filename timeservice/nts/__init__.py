"""Network Time Security's cryptography, from the ``nts`` extra: the AEAD
that seals NTS fields and cookies (cryptography's AES-SIV), the server's
cookies and their keys, and TLS 1.3 for Key Establishment (pyOpenSSL, for
ALPN and the RFC 8446 exporter, which the standard library's ssl lacks).

Nothing imports this layer unless NTS is asked for; require() says in one
line what is missing, and checks once that an empty plaintext seals (it
does only where cryptography is built on OpenSSL 3.5 or newer).
"""

from __future__ import annotations

import functools

EXTRA = "pip install 'timeservice[nts]'"

# The cookie keys (cookies.CookieKeys): a new one each ROTATE_SECONDS, the
# KEPT before it still opening cookies.
ROTATE_SECONDS = 86_400.0
KEPT = 7


class Unavailable(RuntimeError):
    """NTS cannot run here; the message says why, in one line."""


class TlsError(Exception):
    """A TLS exchange of Key Establishment that failed (a certificate not
    trusted or not for the host, no common protocol); the message says why,
    in one line."""


@functools.cache
def require() -> None:
    """Unavailable unless pyOpenSSL and cryptography are installed and seal
    an empty plaintext with AES-SIV, as NTS needs."""
    try:
        import OpenSSL.SSL  # noqa: F401
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV
    except ImportError as exc:
        raise Unavailable(f"NTS needs {exc.name or 'its extra'}: {EXTRA}") from None
    try:
        AESSIV(bytes(32)).encrypt(b"", [b"", bytes(16)])
    except ValueError:
        raise Unavailable(
            "NTS needs AES-SIV to seal empty plaintexts, which this cryptography "
            f"cannot (it needs OpenSSL 3.5 or newer): {EXTRA} brings one that can"
        ) from None
