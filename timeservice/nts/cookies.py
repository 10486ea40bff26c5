"""The server's cookies (RFC 8915 6): what a client hands back with each NTS
request, so that the server keeps no state per client. A cookie holds the
client's two keys and the AEAD algorithm, sealed with a key of the
server's own:

    key ID (4 bytes) | nonce (16) | AES-SIV(key; key ID, nonce) of
        (AEAD algorithm (2) | zero (2) | client-to-server key | server-to-client key)

104 bytes for AES-SIV-CMAC-256's keys: a multiple of 4, as an extension
field's body is, so that no padding can hide where the cookie ends.

The keys live in a file only the service's user can read, made with a new
random key where there is none, so that cookies outlive a restart. The
current key seals; every key in the file opens.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import tempfile
from collections.abc import Mapping

from ..wire import nts
from .aead import Aead

KEY_BYTES = 32
_ID = struct.Struct("!I")
_AEAD = struct.Struct("!Hxx")


class CookieKeys:
    """The keys that seal and open this server's cookies, by key ID."""

    def __init__(self, keys: Mapping[int, bytes], current: int) -> None:
        if current not in keys:
            raise ValueError(f"no key {current} among the keys")
        # The key that seals and those that open, one value, so that a
        # replace() between a seal's two reads cannot mix two sets.
        self._state = (current, {number: Aead(key) for number, key in keys.items()})

    @property
    def current(self) -> int:
        """The ID of the key that seals."""
        return self._state[0]

    def replace(self, other: CookieKeys) -> None:
        """Take `other`'s keys, for every server that shares these (a
        reload): a cookie sealed from now on is sealed with its key."""
        self._state = other._state

    @classmethod
    def new(cls) -> CookieKeys:
        """Keys of one fresh random key."""
        number = secrets.randbits(32)
        return cls({number: secrets.token_bytes(KEY_BYTES)}, number)

    @classmethod
    def load(cls, path: str) -> CookieKeys:
        """The keys in the file at `path`, made (readable by its owner only)
        with one new key where there is none; OSError or ValueError if it
        cannot be read or written, or is not such a file."""
        try:
            with open(path) as kept:
                content = json.load(kept)
        except json.JSONDecodeError:
            raise ValueError(f"{path}: not a file of NTS cookie keys") from None
        except FileNotFoundError:
            keys, number = {}, secrets.randbits(32)
            keys[number] = secrets.token_bytes(KEY_BYTES)
            save(path, keys, number)
            return cls(keys, number)
        try:
            keys = {int(n): bytes.fromhex(k) for n, k in content["keys"].items()}
            current = int(content["current"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"{path}: not a file of NTS cookie keys") from None
        if any(len(key) != KEY_BYTES for key in keys.values()):
            raise ValueError(f"{path}: a key that is not {KEY_BYTES} bytes")
        return cls(keys, current)

    def seal(self, aead: int, c2s: bytes, s2c: bytes) -> bytes:
        """A cookie for a client's keys."""
        current, aeads = self._state
        key_id = _ID.pack(current)
        nonce, sealed = aeads[current].seal(_AEAD.pack(aead) + c2s + s2c, key_id)
        return key_id + nonce + sealed

    def open(self, cookie: bytes) -> tuple[int, bytes, bytes] | None:
        """The AEAD algorithm and the two keys a cookie holds, or None for
        one that no key of this server opens."""
        if len(cookie) < _ID.size + 16 + 16 + _AEAD.size:
            return None
        key_id = cookie[: _ID.size]
        aead = self._state[1].get(_ID.unpack(key_id)[0])
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


def save(path: str, keys: Mapping[int, bytes], current: int) -> None:
    """Write the keys to `path` whole, readable by its owner only."""
    folder = os.path.dirname(os.path.abspath(path))
    content = {"current": current, "keys": {str(n): k.hex() for n, k in keys.items()}}
    handle, temporary = tempfile.mkstemp(prefix=".nts-keys-", dir=folder)
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w") as out:
            json.dump(content, out)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
