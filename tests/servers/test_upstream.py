"""Who may set what the NTP service claims: only the daemon that disciplines
the clock, asked where the kernel vouches for who answers (a port only a
privileged process can bind); a failing answer ends the claim at once; a
stratum-1 daemon is named by its address."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    a_user_of_the_tests_own,
    daemon_port,
    in_namespace,
    namespace,
    needs_netns,
    readline_within,
    udp_socket,
)

from timeservice.clock import kernel
from timeservice.host import capabilities
from timeservice.programs import server as server_program
from timeservice.server import NtpHandler, NtpServer
from timeservice.servers.upstream import UpstreamQuery, unvouched
from timeservice.wire import ntp

# A daemon that binds 127.0.0.1 PORT (as root, for a privileged port), then
# serves as USER, as chronyd does, and answers each request with the fields
# given: stratum, reference ID, leap indicator; "answered" once each.
DAEMON = """
import os, pwd, socket, struct, sys
from timeservice.wire import ntp
port, user, stratum, refid, leap = sys.argv[1:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(port)))
entry = pwd.getpwnam(user)
if entry.pw_uid != os.geteuid():
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
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
    port: int, user: str, stratum=1, refid="GPS", leap=ntp.LEAP_NONE
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


def test_an_address_any_local_user_could_answer_at_is_refused_at_once():
    for address in (("127.0.0.1", 11123), ("192.0.2.1", 8123), ("::1", 1024, 0, 0)):
        problem = unvouched(address)
        assert problem is not None and "any local user can bind" in problem
        with pytest.raises(ValueError, match="below 1024"):
            UpstreamQuery(address)
        with pytest.raises(ValueError):
            NtpServer(("127.0.0.1", 0), upstream=address)
    assert unvouched(("127.0.0.1", 123)) is None
    assert unvouched(("192.0.2.1", 1023)) is None  # another host's: the same rule


def test_the_program_refuses_such_an_upstream_in_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        server_program.main(["0", "--ntp", "0", "--upstream", "127.0.0.1:11123"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "any local user can bind port 11123" in err


@needs_netns
@pytest.mark.skipif(
    capabilities.PORTABLE, reason="the portable path reads no sysctl: below 1024"
)
def test_the_privileged_ports_are_what_the_namespace_says():
    with namespace("pp") as ns:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw",
             "net.ipv4.ip_unprivileged_port_start=2000"],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip
        said = in_namespace(
            ns,
            "from timeservice.servers.upstream import unvouched; "
            "print(unvouched(('127.0.0.1', 1500)), unvouched(('127.0.0.1', 2000)) "
            "is None)",
        )
    assert said == "None False\n"


def test_the_daemons_claim_counts_from_its_privileged_port(serve):
    port = daemon_port()
    for user in ("root", "nobody"):  # a daemon that drops root is believed too
        server = ntp_server(serve, port)
        with daemon(port, user) as gps:
            claimed = claim_after_an_answer(server, gps)
        assert (claimed.leap, claimed.stratum) == (ntp.LEAP_NONE, 2)
        # Behind a stratum-1 daemon, its address, not the reference clock's code.
        assert claimed.reference_id == bytes([127, 0, 0, 1])


def test_a_failing_answer_ends_the_claim_at_once(serve):
    port = daemon_port()
    me = pwd.getpwuid(os.geteuid()).pw_name
    server = ntp_server(serve, port)
    with daemon(port, me, stratum=3, refid="ABCD", leap=0) as good:
        claimed = claim_after_an_answer(server, good)
    assert claimed.stratum == 4
    with daemon(port, me, stratum=3, refid="x", leap=ntp.LEAP_UNSYNCHRONISED) as bad:
        claimed = claim_after_an_answer(server, bad)
    # 2.0.0 kept the old claim for up to 64 s: now the one for no daemon.
    assert (claimed.stratum, claimed.reference_id) == (15, bytes(4))


# A local user of the test's own, forging the daemon's answers, in a network
# namespace of the test's own so that port 123 is free there.

FORGER = """
import json, socket, sys, time
from timeservice.wire import ntp
said = {}
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    probe.bind(("127.0.0.1", 123))  # beside the daemon, as on port 11123
    said["bind_123"] = "bound"
except OSError as exc:
    said["bind_123"] = exc.errno
# The service's query: the socket connected to 127.0.0.1:123 (any user reads this).
ports = []
with open("/proc/net/udp") as table:
    for row in list(table)[1:]:
        local, remote = row.split()[1:3]
        if remote == "0100007F:007B":
            ports.append(int(local.split(":")[1], 16))
said["query_ports"] = ports
evil = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in ports:
    try:
        evil.bind(("127.0.0.1", port))  # its very port: taken
    except OSError as exc:
        said["bind_query"] = exc.errno
sent = 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline and sent < 20000:
    for port in ports:
        for origin in range(8):
            reply = ntp.Packet(1, 4, 4, 3, 0, -20, 0, 0, b"EVIL", 1 << 32,
                               origin << 32 | sent, 2 << 32, 2 << 32)
            evil.sendto(reply.pack(), ("127.0.0.1", port))
            sent += 1
said["sent"] = sent
print(json.dumps(said), flush=True)
"""

SERVICE = """
import json, os, pwd, socket, subprocess, sys, threading
from timeservice.clock import kernel
from timeservice.host import capabilities
from timeservice.server import NtpServer
from timeservice.wire import ntp
daemon_code, forger_code, user = sys.argv[1:]
entry = pwd.getpwnam(user)
# The forger, forked before any thread starts, as the user, with what it
# needs already imported; it waits for the word to go.
go_read, go_write = os.pipe()
said_read, said_write = os.pipe()
forger = os.fork()
if forger == 0:
    try:
        os.close(go_write)
        os.close(said_read)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.read(go_read, 1)
        sys.argv = ["forger", "3"]
        sys.stdout = os.fdopen(said_write, "w")
        exec(forger_code, {"__name__": "forger"})
        sys.stdout.flush()
    finally:
        os._exit(0)
os.close(go_read)
os.close(said_write)
daemon = subprocess.Popen([sys.executable, "-c", daemon_code, "123", "root", "1",
                           "GPS", "0"], stdout=subprocess.PIPE, text=True)
assert daemon.stdout.readline() == "ready\\n"
threading.Thread(target=daemon.stdout.read, daemon=True).start()  # its lines
synchronised = kernel.KernelState(True, ntp.LEAP_NONE, 0.01)
server = NtpServer(("127.0.0.1", 0), upstream=("127.0.0.1", 123),
                   kernel_state=lambda: synchronised, burst=None)
server.state_interval = 0
server.query.interval = 0
serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
serving.start()
claims = []
try:
    ask = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ask.settimeout(10)
    for n in range(1000):  # until the daemon's answer has come: its claim
        ask.sendto(ntp.request_packet(n), server.server_address)
        first = ntp.Packet.unpack(ask.recv(512))
        if first.stratum == 2:
            break
    assert first.stratum == 2, first
    os.write(go_write, b"!")
    while os.waitpid(forger, os.WNOHANG) == (0, 0) and len(claims) < 20000:
        ask.sendto(ntp.request_packet(len(claims)), server.server_address)
        reply = ntp.Packet.unpack(ask.recv(512))
        claims.append((reply.leap, reply.stratum, reply.reference_id.hex()))
    said = json.loads(os.read(said_read, 65536) or b"{}")
finally:
    server.shutdown()
    server.server_close()
    daemon.kill()
    daemon.wait()
print(json.dumps({"forger": said, "claims": sorted(set(claims)),
                  "asked": len(claims)}))
"""


@needs_netns
@pytest.mark.slow
def test_a_local_user_forging_the_daemon_never_sets_the_claim():
    if subprocess.run(["which", "useradd"], capture_output=True).returncode:
        pytest.skip("useradd is not installed")
    with a_user_of_the_tests_own() as user, namespace("fg") as ns:
        result = json.loads(in_namespace(ns, SERVICE, DAEMON, FORGER, user))
    forger, claims = result["forger"], result["claims"]
    print(f"forger: {forger}; {result['asked']} claims asked meanwhile: {claims}")
    assert forger["bind_123"] == 13  # EACCES: only a privileged process may
    assert forger["query_ports"] and forger["bind_query"] == 98  # EADDRINUSE
    assert forger["sent"] > 1000 and result["asked"] > 100
    # Every answer claimed the daemon's time (stratum 2, named by its
    # address); none the forger's (leap insert, stratum 4, EVIL).
    assert claims == [[0, 2, "7f000001"]]
