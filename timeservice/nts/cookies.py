"""The server's cookies (RFC 8915 6): what a client hands back with each NTS
request, so that the server keeps no state per client. A cookie holds the
client's two keys and the AEAD algorithm, sealed with a key of the
server's own:

    key ID (4 bytes) | nonce (16) | AES-SIV(key; key ID, nonce) of
        (AEAD algorithm (2) | zero (2) | client-to-server key | server-to-client key)

104 bytes for AES-SIV-CMAC-256's keys: a multiple of 4, as an extension
field's body is, so that no padding can hide where the cookie ends.

The keys rotate: each `rotate` seconds of the clock (a day) is an epoch,
whose number is the key ID and whose key is derived from one secret
(HMAC-SHA256 of the epoch). The current epoch's key seals; the `kept`
before it still open (a client's cookies open for a week, as ntpd-rs keeps
seven daily keys), and so does the next one, for a host whose clock is a
moment ahead. So every process that holds the secret has the same keys at
the same time, with nothing handed out and nothing to keep in step:
``--workers`` processes, which inherit it, and hosts that are given the
same file, so that several NTP servers behind one name, or a Key
Establishment server sending its clients to another host, open each
other's cookies. No rotation ever makes a client's cookies fail at once:
the ones it holds were sealed at most a few hours before, and open for
`kept` epochs more.

The secret lives in a file only the service's user can read, made with a
random secret where there is none, so that cookies outlive a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Callable

from ..wire import nts
from . import KEPT, ROTATE_SECONDS
from .aead import Aead

SECRET_BYTES = 32
_ID = struct.Struct("!I")
_AEAD = struct.Struct("!Hxx")
_LABEL = b"timeservice NTS cookie key "


class CookieKeys:
    """The keys that seal and open this server's cookies: those derived
    from `secret` for the epoch of `clock()` and its neighbours."""

    def __init__(
        self,
        secret: bytes,
        rotate: float = ROTATE_SECONDS,
        kept: int = KEPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("a cookie secret of at least 16 bytes is needed")
        if not rotate > 0:
            raise ValueError("keys must rotate after some seconds")
        self.rotate, self.kept, self.clock = rotate, kept, clock
        # One value, read once by each seal and open, so that a replace()
        # or a rotation between two reads cannot mix two sets of keys.
        self._state: tuple[bytes, int, dict[int, Aead]] = (secret, -1, {})

    @classmethod
    def new(cls, **settings: float) -> CookieKeys:
        """Keys from a fresh random secret, kept in memory only."""
        return cls(secrets.token_bytes(SECRET_BYTES), **settings)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str, **settings: float) -> CookieKeys:
        """The keys from the secret in the file at `path`, made (readable by
        its owner only) with a new secret where there is none; OSError or
        ValueError if it cannot be read or written, or is not such a file."""
        try:
            with open(path) as kept:
                content = json.load(kept)
            secret = bytes.fromhex(content["secret"])
        except FileNotFoundError:
            secret = secrets.token_bytes(SECRET_BYTES)
            save(path, secret)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}: not a file of NTS cookie keys") from None
        if len(secret) < 16:
            raise ValueError(f"{path}: a secret of fewer than 16 bytes")
        return cls(secret, **settings)  # type: ignore[arg-type]

    def epoch(self) -> int:
        """The epoch of now: the key that seals."""
        return math.floor(self.clock() / self.rotate)

    def _keys(self) -> tuple[int, dict[int, Aead]]:
        """The current epoch and the keys that open, made afresh once the
        epoch has moved on."""
        secret, current, aeads = self._state
        now = self.epoch()
        if now != current:
            wanted = range(now - self.kept, now + 2)
            aeads = {e: aeads.get(e) or derive(secret, e) for e in wanted}
            self._state = (secret, now, aeads)
        return now, aeads

    def replace(self, other: CookieKeys) -> None:
        """Take `other`'s secret, for every server that shares these (a
        reload): cookies sealed from now on are sealed with its keys."""
        self.rotate, self.kept = other.rotate, other.kept
        self._state = (other._state[0], -1, {})

    def seal(self, aead: int, c2s: bytes, s2c: bytes) -> bytes:
        """A cookie for a client's keys."""
        current, aeads = self._keys()
        key_id = _ID.pack(current % 2**32)
        nonce, sealed = aeads[current].seal(_AEAD.pack(aead) + c2s + s2c, key_id)
        return key_id + nonce + sealed

    def open(self, cookie: bytes) -> tuple[int, bytes, bytes] | None:
        """The AEAD algorithm and the two keys a cookie holds, or None for
        one that no key of this server opens (another's, or too old)."""
        if len(cookie) < _ID.size + 16 + 16 + _AEAD.size:
            return None
        key_id = cookie[: _ID.size]
        current, aeads = self._keys()
        (number,) = _ID.unpack(key_id)
        epoch = current - (current - number) % 2**32  # the latest it can be
        aead = aeads.get(epoch) or aeads.get(epoch + 2**32)
        if aead is None:
            return None
        nonce = cookie[_ID.size : _ID.size + 16]
        try:
            inside = aead.open(nonce, cookie[_ID.size + 16 :], key_id)
        except ValueError:
            return None
        (algorithm,) = _AEAD.unpack_from(inside)
        length = nts.KEY_BYTES.get(algorithm)
        if length is None or len(inside) != _AEAD.size + 2 * length:
            return None
        keys = inside[_AEAD.size :]
        return algorithm, keys[:length], keys[length:]


def derive(secret: bytes, epoch: int) -> Aead:
    """The key of one epoch: HMAC-SHA256 of its number under the secret."""
    message = _LABEL + epoch.to_bytes(8, "big", signed=True)
    return Aead(hmac.new(secret, message, hashlib.sha256).digest())


def save(path: str, secret: bytes) -> None:
    """Write the secret to `path` whole, readable by its owner only."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".nts-keys-", dir=folder)
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w") as out:
            json.dump({"secret": secret.hex()}, out)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
