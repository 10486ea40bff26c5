"""Who may set what the NTP service claims: only the daemon that disciplines
the clock, known by the user that holds its socket; a failing answer ends
the claim at once; a stratum-1 daemon is named by its address."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import (
    OWNERS_READABLE,
    ROOT,
    TIMEOUT,
    daemon_port,
    free_port,
    readline_within,
    udp_socket,
)

from timeservice.clock import kernel
from timeservice.server import NtpHandler, NtpServer
from timeservice.servers import upstream as upstream_module
from timeservice.wire import ntp

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root, to answer as another user",
)

# A daemon that binds 127.0.0.1 PORT as USER (after dropping to it, as an
# unprivileged process would be) and answers each request with the fields
# given: stratum, reference ID, leap indicator; "answered" once each.
DAEMON = """
import os, pwd, socket, struct, sys
from timeservice.wire import ntp
port, user, stratum, refid, leap = sys.argv[1:]
entry = pwd.getpwnam(user)
if entry.pw_uid != os.geteuid():
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(port)))
print("ready", flush=True)
while True:
    request, peer = sock.recvfrom(512)
    asked = ntp.Packet.unpack(request)
    reply = ntp.Packet(int(leap), 4, 4, int(stratum), 0, -20, 0, 0,
                       refid.encode().ljust(4, b"\\0"), 1 << 32, asked.transmit,
                       2 << 32, 2 << 32)
    sock.sendto(reply.pack(), peer)
    print("answered", flush=True)
"""


@contextlib.contextmanager
def daemon(
    port: int, user: str, stratum=1, refid="EVIL", leap=ntp.LEAP_INSERT
) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(port), user, str(stratum), refid, str(leap)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert readline_within(process.stdout) == "ready\n"
        yield process
    finally:
        process.kill()
        process.communicate(timeout=TIMEOUT)


SYNCHRONISED = kernel.KernelState(True, ntp.LEAP_NONE, 0.01)


def claim_after_an_answer(server, process) -> ntp.Packet:
    """Ask the service (which asks the daemon), wait for the daemon's answer,
    and ask again: what the service claims then."""
    with udp_socket() as sock:
        sock.sendto(ntp.request_packet(1), server.server_address)
        sock.recv(512)
        assert readline_within(process.stdout) == "answered\n"
        sock.sendto(ntp.request_packet(2), server.server_address)
        return ntp.Packet.unpack(sock.recv(512))


def ntp_server(serve, port, **settings):
    server = serve(
        NtpServer,
        NtpHandler,
        upstream=("127.0.0.1", port),
        kernel_state=lambda: SYNCHRONISED,
        **settings,
    )
    server.state_interval = 0  # every request reads the state afresh
    server.query.interval = 0  # and asks the daemon again
    return server


@needs_root
def test_an_unprivileged_process_on_the_daemons_port_cannot_set_the_claim(
    serve, caplog
):
    port = free_port()  # as after a restart of the daemon: its port is free
    server = ntp_server(serve, port)
    with daemon(port, "nobody") as evil:
        claimed = claim_after_an_answer(server, evil)
    # 2.0.0: leap second insert, stratum 2, reference ID EVIL, in 1.2 s.
    assert (claimed.leap, claimed.stratum, claimed.reference_id) == (0, 15, bytes(4))
    assert "not believed" in caplog.text
    caplog.clear()


@needs_root
@pytest.mark.skipif(
    not OWNERS_READABLE, reason="the owner of a socket cannot be read on this path"
)
def test_the_daemons_claim_counts_from_root_or_its_own_user(serve):
    for user, users in (("root", None), ("nobody", {0, pwd.getpwnam("nobody").pw_uid})):
        port = free_port()
        settings = {} if users is None else {"upstream_users": frozenset(users)}
        server = ntp_server(serve, port, **settings)
        with daemon(port, user, stratum=1, refid="GPS") as gps:
            claimed = claim_after_an_answer(server, gps)
        assert (claimed.leap, claimed.stratum) == (ntp.LEAP_INSERT, 2)
        # Behind a stratum-1 daemon, its address, not the reference clock's code.
        assert claimed.reference_id == bytes([127, 0, 0, 1])


def test_a_failing_answer_ends_the_claim_at_once(serve):
    port = daemon_port()
    me = pwd.getpwuid(os.geteuid()).pw_name
    server = ntp_server(serve, port, upstream_users=frozenset({os.geteuid()}))
    with daemon(port, me, stratum=3, refid="ABCD", leap=0) as good:
        claimed = claim_after_an_answer(server, good)
    assert claimed.stratum == 4
    with daemon(port, me, stratum=3, refid="x", leap=ntp.LEAP_UNSYNCHRONISED) as bad:
        claimed = claim_after_an_answer(server, bad)
    # 2.0.0 kept the old claim for up to 64 s: now the one for no daemon.
    assert (claimed.stratum, claimed.reference_id) == (15, bytes(4))


def test_where_the_owner_cannot_be_read_only_a_privileged_port_is_believed(
    monkeypatch,
):
    monkeypatch.setattr(upstream_module, "udp_owners", lambda host, port: None)
    assert upstream_module.trusted(("127.0.0.1", 123), {0})
    assert not upstream_module.trusted(("127.0.0.1", 11123), {0})
    assert upstream_module.trusted(("192.0.2.1", 11123), {0})  # another host's
