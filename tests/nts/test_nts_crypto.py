"""NTS's cryptography on its own: the AEAD, the server's cookies and their
key file, and the host name a certificate must carry."""

from __future__ import annotations

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
    "content, problem",
    [
        ("not json", "not a file of NTS cookie keys"),
        ("[]", "not a file of NTS cookie keys"),
        ('{"keys": {"1": "00"}, "current": 1}', "not a file of NTS cookie keys"),
        ('{"secret": "zz"}', "not a file of NTS cookie keys"),
        ('{"secret": "0011"}', "fewer than 16 bytes"),
    ],
)
def test_a_key_file_that_is_not_one_is_refused(tmp_path, content, problem):
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        CookieKeys.load(str(path))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


KEYS = (15, b"c" * 32, b"s" * 32)


def test_keys_rotate_and_the_earlier_ones_still_open_for_a_week():
    clock = Clock()
    keys = CookieKeys(b"k" * 32, rotate=86_400, kept=7, clock=clock)
    cookie = keys.seal(*KEYS)
    for _ in range(7):  # a new key each day; the cookie opens all week
        clock.now += 86_400
        assert keys.open(cookie) == KEYS
        assert keys.seal(*KEYS)[:4] != cookie[:4]  # sealed by today's key
    clock.now += 86_400  # the eighth day: its key is gone
    assert keys.open(cookie) is None


def test_every_process_and_host_with_the_secret_has_the_same_keys_at_once():
    """Workers and hosts derive the keys, nothing is handed out: a host a
    moment ahead has already turned to the next key, and still opens."""
    here, there, ahead = Clock(), Clock(), Clock()
    ours = CookieKeys(b"k" * 32, rotate=60, clock=here)
    theirs = CookieKeys(b"k" * 32, rotate=60, clock=there)
    early = CookieKeys(b"k" * 32, rotate=60, clock=ahead)
    for clock in (here, there, ahead):  # just before a rotation
        clock.now = 60 * 30_000_000 - 0.5
    ahead.now += 1  # past it
    for sealer, opener in [(ours, theirs), (theirs, ours), (early, ours)]:
        assert opener.open(sealer.seal(*KEYS)) == KEYS
    assert CookieKeys(b"x" * 32, clock=here).open(ours.seal(*KEYS)) is None


def test_a_replaced_secret_seals_from_then_on():
    clock = Clock()
    keys = CookieKeys(b"k" * 32, clock=clock)
    before = keys.seal(*KEYS)
    keys.replace(CookieKeys(b"n" * 32, clock=clock))
    assert keys.open(before) is None  # the old secret's cookies are gone
    assert keys.open(keys.seal(*KEYS)) == KEYS


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
