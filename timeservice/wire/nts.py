"""Network Time Security (RFC 8915) on the wire, as pure code: the records
of NTS Key Establishment (section 4), and the NTP extension fields (RFC
7822) that carry NTS in NTP packets (section 5). No sockets, no TLS and no
cryptography here: sealing and opening are the caller's, passed in.

A KE record is a 16-bit type (its top bit says critical), a 16-bit body
length and the body. An extension field is a 16-bit type, a 16-bit length
(of the whole field, a multiple of 4, at least 16) and the body, padded
with zeros.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import ReplyError

KE_PORT = 4460
ALPN = b"ntske/1"
EXPORTER_LABEL = b"EXPORTER-network-time-security"

# NTS-KE record types.
END_OF_MESSAGE = 0
NEXT_PROTOCOL = 1
ERROR = 2
WARNING = 3
AEAD_ALGORITHM = 4
NEW_COOKIE = 5
SERVER_NEGOTIATION = 6
PORT_NEGOTIATION = 7
CRITICAL = 0x8000

NTPV4 = 0  # the one next protocol: NTPv4
AES_SIV_CMAC_256 = 15  # the AEAD algorithm every implementation has
KEY_BYTES = {AES_SIV_CMAC_256: 32}

# Error record codes.
UNRECOGNIZED_CRITICAL_RECORD = 0
BAD_REQUEST = 1
INTERNAL_SERVER_ERROR = 2

COOKIES = 8  # new cookies a KE server sends, as chrony and ntpd-rs send

# NTP extension field types for NTS.
UNIQUE_IDENTIFIER = 0x0104
COOKIE = 0x0204
COOKIE_PLACEHOLDER = 0x0304
AUTHENTICATOR = 0x0404

NAK = b"NTSN"  # the Kiss-o'-Death code of a request the server cannot open

_HEAD = struct.Struct("!HH")
_SHORT = struct.Struct("!H")
MIN_FIELD_BYTES = 16  # RFC 7822: no extension field is shorter
MIN_UNIQUE_ID_BYTES = 32  # RFC 8915 5.3


class NtsError(ReplyError):
    """An NTS exchange that cannot be used: the message says why."""


class KeError(ValueError):
    """A KE request a server answers with an Error record of `code`."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True)
class Record:
    """One NTS-KE record."""

    type: int
    body: bytes
    critical: bool = False

    def pack(self) -> bytes:
        """The record's bytes: its head and its body."""
        head = self.type | (CRITICAL if self.critical else 0)
        return _HEAD.pack(head, len(self.body)) + self.body


def shorts(values: Iterable[int]) -> bytes:
    """A record body of 16-bit values."""
    return b"".join(_SHORT.pack(value) for value in values)


def read_shorts(body: bytes) -> list[int]:
    """The 16-bit values of a record body; ValueError for an odd length."""
    if len(body) % 2:
        raise ValueError("a list of 16-bit values of odd length")
    return [value for (value,) in _SHORT.iter_unpack(body)]


def split_records(data: bytes) -> tuple[list[Record], bytes]:
    """The whole records at the start of `data`, and the bytes left after
    them (a record not all there yet)."""
    records, offset = [], 0
    while len(data) - offset >= _HEAD.size:
        head, length = _HEAD.unpack_from(data, offset)
        end = offset + _HEAD.size + length
        if end > len(data):
            break
        body = data[offset + _HEAD.size : end]
        records.append(Record(head & ~CRITICAL, body, bool(head & CRITICAL)))
        offset = end
    return records, data[offset:]


def ke_message_done(records: Sequence[Record]) -> bool:
    """Whether a message is whole: it ends with End of Message."""
    return bool(records) and records[-1].type == END_OF_MESSAGE


def client_request(aeads: Sequence[int] = (AES_SIV_CMAC_256,)) -> bytes:
    """A client's KE request: NTPv4, the AEAD algorithms it speaks, the end."""
    return b"".join(
        record.pack()
        for record in (
            Record(NEXT_PROTOCOL, shorts([NTPV4]), critical=True),
            Record(AEAD_ALGORITHM, shorts(aeads)),
            Record(END_OF_MESSAGE, b"", critical=True),
        )
    )


@dataclass(frozen=True)
class KeRequest:
    """What a client asked for: the next protocols and AEAD algorithms, in
    its order of preference."""

    protocols: tuple[int, ...]
    aeads: tuple[int, ...]


def read_ke_request(records: Sequence[Record]) -> KeRequest:
    """A client's KE request, or KeError with the code of the Error record
    that answers it (RFC 8915 4.1)."""
    protocols: list[int] | None = None
    aeads: list[int] = []
    for record in records:
        try:
            if record.type == NEXT_PROTOCOL:
                if protocols is not None:
                    raise KeError(BAD_REQUEST, "Next Protocol Negotiation twice")
                protocols = read_shorts(record.body)
            elif record.type == AEAD_ALGORITHM:
                aeads += read_shorts(record.body)
            elif record.type in (NEW_COOKIE, SERVER_NEGOTIATION, PORT_NEGOTIATION):
                continue  # a client may send them; this server decides
            elif record.type in (END_OF_MESSAGE, WARNING):
                continue
            elif record.type == ERROR:
                raise KeError(BAD_REQUEST, "a client sent an Error record")
            elif record.critical:
                raise KeError(
                    UNRECOGNIZED_CRITICAL_RECORD,
                    f"unrecognised critical record type {record.type}",
                )
        except ValueError as exc:
            if isinstance(exc, KeError):
                raise
            raise KeError(BAD_REQUEST, str(exc)) from None
    if not ke_message_done(records):
        raise KeError(BAD_REQUEST, "no End of Message")
    if protocols is None:
        raise KeError(BAD_REQUEST, "no Next Protocol Negotiation")
    return KeRequest(tuple(protocols), tuple(aeads))


def server_response(
    aead: int | None,
    cookies: Sequence[bytes],
    port: int | None = None,
    server: str | None = None,
) -> bytes:
    """A server's KE answer: NTPv4 (or none, when the client offered no
    protocol it serves), the AEAD algorithm chosen, where to send NTP if
    not here on port 123, the cookies, the end."""
    records = [
        Record(NEXT_PROTOCOL, shorts([] if aead is None else [NTPV4]), critical=True)
    ]
    if aead is not None:
        records.append(Record(AEAD_ALGORITHM, shorts([aead]), critical=True))
        if server is not None:
            records.append(Record(SERVER_NEGOTIATION, server.encode("ascii"), True))
        if port is not None:
            records.append(Record(PORT_NEGOTIATION, shorts([port]), critical=True))
        records += [Record(NEW_COOKIE, cookie) for cookie in cookies]
    records.append(Record(END_OF_MESSAGE, b"", critical=True))
    return b"".join(record.pack() for record in records)


def error_response(code: int) -> bytes:
    """A server's KE answer that refuses the request: an Error record."""
    return (
        Record(ERROR, shorts([code]), True).pack()
        + Record(END_OF_MESSAGE, b"", True).pack()
    )


@dataclass(frozen=True)
class KeResponse:
    """What a KE server gave: the AEAD algorithm, the cookies, and where to
    send NTP (None: the KE server's host, port 123)."""

    aead: int
    cookies: tuple[bytes, ...]
    server: str | None
    port: int | None


ERROR_WORDS = {
    UNRECOGNIZED_CRITICAL_RECORD: "unrecognised critical record",
    BAD_REQUEST: "bad request",
    INTERNAL_SERVER_ERROR: "internal server error",
}


def read_ke_response(records: Sequence[Record], aeads: Sequence[int]) -> KeResponse:
    """A server's KE answer to a request that offered `aeads`; NtsError for
    one that refuses, offers nothing the client speaks, or cannot be read."""
    protocols: list[int] | None = None
    aead: list[int] | None = None
    cookies: list[bytes] = []
    server = port = None
    try:
        for record in records:
            if record.type == ERROR:
                [code] = read_shorts(record.body)
                words = ERROR_WORDS.get(code, f"code {code}")
                raise NtsError(f"the KE server refused the request: {words}")
            if record.type == NEXT_PROTOCOL:
                protocols = read_shorts(record.body)
            elif record.type == AEAD_ALGORITHM:
                aead = read_shorts(record.body)
            elif record.type == NEW_COOKIE:
                cookies.append(record.body)
            elif record.type == SERVER_NEGOTIATION:
                server = record.body.decode("ascii")
            elif record.type == PORT_NEGOTIATION:
                [port] = read_shorts(record.body)
            elif record.critical and record.type not in (END_OF_MESSAGE, WARNING):
                raise NtsError(f"the KE server sent a critical record {record.type}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise NtsError(f"the KE server's answer cannot be read: {exc}") from None
    if not ke_message_done(records):
        raise NtsError("the KE server's answer has no End of Message")
    if protocols != [NTPV4]:
        raise NtsError("the KE server offers no NTPv4")
    if aead is None or len(aead) != 1 or aead[0] not in aeads:
        raise NtsError("the KE server offers no AEAD algorithm this client speaks")
    if not cookies:
        raise NtsError("the KE server sent no cookie")
    return KeResponse(aead[0], tuple(cookies), server, port)


def exporter_context(aead: int, server_to_client: bool) -> bytes:
    """The context of the TLS exporter for a key (RFC 8915 5.1): the next
    protocol, the AEAD algorithm, and which way the key goes."""
    return shorts([NTPV4, aead]) + (b"\x01" if server_to_client else b"\x00")


# NTP extension fields


def field(kind: int, body: bytes, least: int = MIN_FIELD_BYTES) -> bytes:
    """An extension field: its head, `body`, and zeros to a multiple of 4
    bytes, at least `least` in all."""
    size = max(least, (_HEAD.size + len(body) + 3) // 4 * 4)
    return _HEAD.pack(kind, size) + body + bytes(size - _HEAD.size - len(body))


@dataclass(frozen=True)
class Field:
    """An extension field as it came: its type, its body (padding and all),
    and where it starts in the packet."""

    type: int
    body: bytes
    offset: int


def read_fields(packet: bytes, start: int = 48) -> list[Field]:
    """The extension fields after the NTP header; ValueError where the rest
    of the packet is not a sequence of them (a MAC, or garbage)."""
    fields, offset = [], start
    while offset < len(packet):
        if len(packet) - offset < MIN_FIELD_BYTES:
            raise ValueError("not an extension field (too short: a MAC?)")
        kind, size = _HEAD.unpack_from(packet, offset)
        if size < MIN_FIELD_BYTES or size % 4 or offset + size > len(packet):
            raise ValueError(f"extension field of length {size} at {offset}")
        fields.append(Field(kind, packet[offset + _HEAD.size : offset + size], offset))
        offset += size
    return fields


def authenticator(nonce: bytes, ciphertext: bytes) -> bytes:
    """The NTS Authenticator and Encrypted Extension Fields field."""
    body = _HEAD.pack(len(nonce), len(ciphertext)) + padded(nonce) + padded(ciphertext)
    return field(AUTHENTICATOR, body)


def padded(data: bytes) -> bytes:
    """`data` and zeros to a multiple of 4 bytes."""
    return data + bytes(-len(data) % 4)


def read_authenticator(body: bytes) -> tuple[bytes, bytes]:
    """The nonce and ciphertext of an Authenticator field's body; ValueError
    if they do not fit in it."""
    if len(body) < _HEAD.size:
        raise ValueError("an authenticator without its lengths")
    nonce_length, cipher_length = _HEAD.unpack_from(body)
    nonce_end = _HEAD.size + nonce_length + -nonce_length % 4
    cipher_end = nonce_end + cipher_length
    if cipher_end > len(body):
        raise ValueError("an authenticator longer than its field")
    return body[_HEAD.size : _HEAD.size + nonce_length], body[nonce_end:cipher_end]


Seal = Callable[[bytes, bytes], tuple[bytes, bytes]]  # (plaintext, ad) -> (nonce, ct)
Open = Callable[[bytes, bytes, bytes], bytes]  # (nonce, ct, ad) -> plaintext


@dataclass(frozen=True)
class Request:
    """What an NTS request carries: its Unique Identifier field whole, its
    cookie, how many cookies it asks for in all, and what it authenticated
    (the packet up to the authenticator, and the authenticator's nonce and
    ciphertext)."""

    unique_id: bytes
    cookie: bytes
    cookies_wanted: int
    authenticated: bytes
    nonce: bytes
    ciphertext: bytes


def read_request(packet: bytes) -> Request | None:
    """The NTS parts of a request (RFC 8915 5.7), or None for one that does
    not ask for NTS; ValueError for one that asks for it wrongly."""
    fields = read_fields(packet)
    kinds = [f.type for f in fields]
    if COOKIE not in kinds and AUTHENTICATOR not in kinds:
        return None
    ids = [f for f in fields if f.type == UNIQUE_IDENTIFIER]
    cookies = [f for f in fields if f.type == COOKIE]
    if len(ids) != 1 or len(ids[0].body) < MIN_UNIQUE_ID_BYTES:
        raise ValueError("an NTS request needs one Unique Identifier of 32 bytes")
    if len(cookies) != 1:
        raise ValueError("an NTS request needs one cookie")
    last = fields[-1]
    if last.type != AUTHENTICATOR or kinds.count(AUTHENTICATOR) != 1:
        raise ValueError("an NTS request ends with its one authenticator")
    placeholders = [f for f in fields if f.type == COOKIE_PLACEHOLDER]
    if any(len(p.body) < len(cookies[0].body) for p in placeholders):
        raise ValueError("a cookie placeholder smaller than the cookie")
    nonce, ciphertext = read_authenticator(last.body)
    uid = ids[0]
    return Request(
        packet[uid.offset : uid.offset + _HEAD.size + len(uid.body)],
        cookies[0].body,
        1 + len(placeholders),
        packet[: last.offset],
        nonce,
        ciphertext,
    )
