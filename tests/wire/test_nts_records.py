"""NTS on the wire, by hand: Key Establishment records and the NTP
extension fields that carry NTS, with bytes worked out from RFC 8915."""

from __future__ import annotations

import pytest

from timeservice.wire import ntp, nts


def test_a_client_request_is_ntpv4_aes_siv_and_the_end():
    assert nts.client_request() == bytes.fromhex(
        "8001 0002 0000"  # critical Next Protocol Negotiation: NTPv4
        "0004 0002 000f"  # AEAD Algorithm Negotiation: AEAD_AES_SIV_CMAC_256
        "8000 0000"  # critical End of Message
    )


def test_records_split_whole_and_keep_what_is_not_all_there():
    data = nts.client_request()
    records, rest = nts.split_records(data + b"\x80\x05\x00")
    assert [r.type for r in records] == [1, 4, 0] and rest == b"\x80\x05\x00"
    assert records[0].critical and not records[1].critical
    assert nts.read_ke_request(records) == nts.KeRequest((0,), (15,))


@pytest.mark.parametrize(
    "records, code",
    [
        ([nts.Record(nts.NEXT_PROTOCOL, b"\x00\x00", True)], nts.BAD_REQUEST),
        (
            [nts.Record(99, b"", True), nts.Record(nts.END_OF_MESSAGE, b"", True)],
            nts.UNRECOGNIZED_CRITICAL_RECORD,
        ),
        (
            [
                nts.Record(nts.NEXT_PROTOCOL, b"\x00", True),
                nts.Record(nts.END_OF_MESSAGE, b"", True),
            ],
            nts.BAD_REQUEST,
        ),
        ([nts.Record(nts.END_OF_MESSAGE, b"", True)], nts.BAD_REQUEST),
    ],
    ids=["no end", "unknown critical", "odd length", "no protocol"],
)
def test_a_request_a_server_cannot_take_gets_the_error_code_rfc_8915_gives(
    records, code
):
    with pytest.raises(nts.KeError) as refused:
        nts.read_ke_request(records)
    assert refused.value.code == code


def test_an_unknown_record_that_is_not_critical_is_passed_over():
    records, _ = nts.split_records(
        nts.Record(77, b"whatever").pack() + nts.client_request()
    )
    assert nts.read_ke_request(records).aeads == (15,)


def test_a_server_answer_reads_back_with_its_port_and_cookies():
    answer = nts.server_response(15, [b"c1" * 50, b"c2" * 50], port=11123)
    records, rest = nts.split_records(answer)
    assert rest == b""
    read = nts.read_ke_response(records, (15,))
    assert read == nts.KeResponse(15, (b"c1" * 50, b"c2" * 50), None, 11123)


@pytest.mark.parametrize(
    "answer, problem",
    [
        (nts.error_response(nts.BAD_REQUEST), "refused the request: bad request"),
        (nts.server_response(None, []), "offers no NTPv4"),
        (nts.server_response(16, [b"x" * 100]), "no AEAD algorithm this client"),
        (nts.server_response(15, []), "sent no cookie"),
        (nts.server_response(15, [b"x"])[:-4], "no End of Message"),
    ],
)
def test_a_server_answer_a_client_cannot_use_is_named(answer, problem):
    records, _ = nts.split_records(answer)
    with pytest.raises(nts.NtsError, match=problem):
        nts.read_ke_response(records, (15,))


def test_the_exporter_context_is_protocol_aead_and_direction():
    assert nts.exporter_context(15, False) == bytes.fromhex("0000000f00")
    assert nts.exporter_context(15, True) == bytes.fromhex("0000000f01")


def test_an_extension_field_is_padded_to_four_and_at_least_sixteen_bytes():
    assert nts.field(nts.COOKIE, b"abc") == bytes.fromhex("02040010") + b"abc" + bytes(
        9
    )
    assert len(nts.field(nts.COOKIE, bytes(13))) == 20
    packet = bytes(48) + nts.field(nts.COOKIE, b"abc") + nts.field(0x0104, bytes(32))
    fields = nts.read_fields(packet)
    assert [(f.type, f.offset) for f in fields] == [(0x0204, 48), (0x0104, 64)]


@pytest.mark.parametrize(
    "rest", [bytes(20), bytes(24), bytes.fromhex("0204000c") + bytes(8), b"\x01\x04"]
)
def test_what_is_not_extension_fields_is_a_value_error(rest):
    with pytest.raises(ValueError):
        nts.read_fields(bytes(48) + rest)  # a MAC (20, 24 bytes), bad lengths


def test_an_authenticator_reads_back_its_nonce_and_ciphertext():
    field = nts.authenticator(b"n" * 16, b"c" * 18)
    assert len(field) % 4 == 0
    assert nts.read_authenticator(field[4:]) == (b"n" * 16, b"c" * 18)
    with pytest.raises(ValueError):
        nts.read_authenticator(bytes.fromhex("0010 0100") + bytes(20))


def nts_request(*fields: bytes) -> bytes:
    return ntp.request_packet(10**18) + b"".join(fields)


UID = nts.field(nts.UNIQUE_IDENTIFIER, bytes(range(32)))
COOKIE = nts.field(nts.COOKIE, b"k" * 100)
AUTH = nts.authenticator(b"n" * 16, b"c" * 16)


def test_an_nts_request_is_read_for_what_it_authenticated():
    placeholder = nts.field(nts.COOKIE_PLACEHOLDER, bytes(100))
    packet = nts_request(UID, COOKIE, placeholder, placeholder, AUTH)
    request = nts.read_request(packet)
    assert request is not None
    assert request.unique_id == UID and request.cookie == b"k" * 100
    assert request.cookies_wanted == 3
    assert request.authenticated == packet[: -len(AUTH)]
    assert (request.nonce, request.ciphertext) == (b"n" * 16, b"c" * 16)
    assert nts.read_request(nts_request(UID)) is None  # extension fields, no NTS


@pytest.mark.parametrize(
    "fields",
    [
        (COOKIE, AUTH),  # no Unique Identifier
        (nts.field(nts.UNIQUE_IDENTIFIER, bytes(16)), COOKIE, AUTH),  # too short
        (UID, COOKIE, COOKIE, AUTH),  # two cookies
        (UID, COOKIE, AUTH, UID),  # the authenticator not last
        (UID, COOKIE, nts.field(nts.COOKIE_PLACEHOLDER, bytes(8)), AUTH),
        (UID, AUTH),  # no cookie
    ],
    ids=["no uid", "short uid", "two cookies", "auth not last", "small place", "none"],
)
def test_an_nts_request_asked_for_wrongly_is_a_value_error(fields):
    with pytest.raises(ValueError):
        nts.read_request(nts_request(*fields))


def test_an_ntpv4_request_with_extension_fields_is_a_request_a_mac_is_not():
    assert ntp.request_version(nts_request(UID)) == 4
    assert ntp.request_version(ntp.request_packet(1) + bytes(20)) is None  # a MAC
    version_3 = bytes([0x1B]) + nts_request(UID)[1:]
    assert ntp.request_version(version_3) is None  # fields are NTPv4's
