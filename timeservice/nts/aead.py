"""AEAD_AES_SIV_CMAC_256 (RFC 5297) as NTS uses it: a 32-byte key, a fresh
random nonce for every seal, the associated data authenticated and not
encrypted. As RFC 5297's nonce-based form puts it, the nonce is the last
component of the associated data vector."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

NONCE_BYTES = 16


class Aead:
    """Seal and open with one key."""

    def __init__(self, key: bytes) -> None:
        self._siv = AESSIV(key)

    def seal(self, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
        """A fresh nonce, and `plaintext` sealed with it and `associated`."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._siv.encrypt(plaintext, [associated, nonce])

    def open(self, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
        """The plaintext, or ValueError if the ciphertext is not the key's
        for this nonce and associated data."""
        try:
            return self._siv.decrypt(ciphertext, [associated, nonce])
        except InvalidTag:
            raise ValueError("does not authenticate") from None
