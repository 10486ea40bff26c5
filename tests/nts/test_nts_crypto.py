"""NTS's cryptography on its own: the AEAD, the server's cookies and their
key file, and the host name a certificate must carry."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import NTS_EXTRA

pytestmark = pytest.mark.skipif(
    not NTS_EXTRA, reason="needs the nts extra: pip install 'timeservice[nts]'"
)

if NTS_EXTRA:
    from cryptography import x509

    from timeservice.nts import require
    from timeservice.nts.aead import Aead
    from timeservice.nts.cookies import CookieKeys
    from timeservice.nts.tls import name_matches


def test_the_extra_seals_an_empty_plaintext_as_nts_needs():
    require()  # raises Unavailable where it cannot
    nonce, sealed = Aead(bytes(32)).seal(b"", b"associated")
    assert len(nonce) == 16 and len(sealed) == 16  # the tag alone
    assert Aead(bytes(32)).open(nonce, sealed, b"associated") == b""


def test_the_aead_opens_only_what_its_key_sealed_with_that_data():
    aead = Aead(os.urandom(32))
    nonce, sealed = aead.seal(b"cookies", b"header")
    assert aead.open(nonce, sealed, b"header") == b"cookies"
    for args in (
        (nonce, sealed, b"headeR"),
        (bytes(16), sealed, b"header"),
        (nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"header"),
    ):
        with pytest.raises(ValueError, match="does not authenticate"):
            aead.open(*args)
    with pytest.raises(ValueError):
        Aead(os.urandom(32)).open(nonce, sealed, b"header")
    assert aead.seal(b"x", b"")[0] != aead.seal(b"x", b"")[0]  # a fresh nonce


def test_a_cookie_holds_the_keys_and_opens_only_with_the_servers_key():
    keys = CookieKeys.new()
    cookie = keys.seal(15, b"c" * 32, b"s" * 32)
    assert len(cookie) == 104  # a multiple of 4: no padding hides its end
    assert keys.open(cookie) == (15, b"c" * 32, b"s" * 32)
    assert keys.seal(15, b"c" * 32, b"s" * 32) != cookie  # a fresh nonce each
    assert CookieKeys.new().open(cookie) is None  # another server's
    assert keys.open(cookie + bytes(4)) is None  # padding is not the cookie
    assert keys.open(cookie[:-1] + bytes([cookie[-1] ^ 1])) is None
    assert keys.open(b"short") is None


def test_the_key_file_is_made_for_its_owner_alone_and_outlives_a_restart(tmp_path):
    path = str(tmp_path / "keys")
    first = CookieKeys.load(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cookie = first.seal(15, b"c" * 32, b"s" * 32)
    again = CookieKeys.load(path)  # as after a restart
    assert again.open(cookie) == (15, b"c" * 32, b"s" * 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nts-keys")]


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"keys": {"1": "00"}, "current": 1}', "{}"]
)
def test_a_key_file_that_is_not_one_is_refused(tmp_path, content):
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(ValueError, match="keys"):
        CookieKeys.load(str(path))


def test_a_key_file_names_its_current_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text(json.dumps({"current": 7, "keys": {"8": "00" * 32}}))
    with pytest.raises(ValueError, match="no key 7"):
        CookieKeys.load(str(path))


@pytest.mark.parametrize(
    "pattern, host, matches",
    [
        ("time.example", "time.example", True),
        ("*.example", "time.example", True),
        ("*.example", "a.time.example", False),  # one label only
        ("*.example", "example", False),
        ("time.example", "other.example", False),
    ],
)
def test_a_wildcard_stands_for_one_leftmost_label(pattern, host, matches):
    assert name_matches(pattern, host) is matches


def test_an_address_must_be_in_the_certificates_addresses(lab):
    from timeservice.nts.tls import check_host

    class Peer:
        def __init__(self, path: str) -> None:
            with open(path, "rb") as file:
                pem = file.read()
            self.cert = x509.load_pem_x509_certificates(pem)[0]

        def get_peer_certificate(self):
            return self

        def to_cryptography(self):
            return self.cert

    check_host(Peer(lab.cert), "127.0.0.1")
    check_host(Peer(lab.cert), "LOCALHOST")
    with pytest.raises(Exception, match="not for 127.0.0.2"):
        check_host(Peer(lab.cert), "127.0.0.2")
    with pytest.raises(Exception, match=r"not for localhost \(it names elsewhere"):
        check_host(Peer(lab.wrong_name), "localhost")
