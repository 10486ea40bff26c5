"""NTS judged by chronyd (4.3, built +NTS): chronyd authenticates this
server, once (``-Q``) and as a client that keeps polling, and this client
and the skew check authenticate chronyd's NTS server. Certificates are the
lab's own; no clock is set (``-x``, ``-Q``)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    a_user_of_the_tests_own,
    make_lab,
    readline_within,
    until,
)
from test_interop import CHRONY_OFFSET, free_port, needs, run, started, wait_for_udp

from timeservice.clients.nts import ask_nts_once, establish
from timeservice.nts import TlsError
from timeservice.wire import ntp


@contextlib.contextmanager
def our_nts_server(lab, tmp_path: Path, *more: str) -> Iterator[dict[str, int]]:
    """This project's server as a program, NTP and NTS-KE on free ports (and
    `more` options): the ports its ready file gives, by protocol."""
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "timeservice.server", "--no-line", "--ntp", "0",
            "--local-stratum", "10", "--nts-ke", "0", "--nts-cert", lab.cert,
            "--nts-key", lab.key, "--nts-cookie-keys", str(tmp_path / "keys"),
            "--ready-file", str(ready), "-q", *more,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert readline_within(process.stdout).startswith("Serving NTP")
        served = json.loads(ready.read_text())["serving"]
        yield {entry["protocol"]: entry["port"] for entry in served}
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
        assert "Traceback" not in err, err


def private_folder(tmp_path: Path, name: str) -> Path:
    """A folder only root reads, as chronyd wants for its dumps and socket."""
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    return folder


def client_config(folder: Path, ports: dict[str, int], ca: str, *more: str) -> Path:
    config = folder / "chrony.conf"
    config.write_text(
        "\n".join(
            [
                f"server 127.0.0.1 port {ports['ntp']} nts ntsport {ports['nts-ke']} "
                "iburst minpoll -4 maxpoll -4",
                f"ntstrustedcerts {ca}",
                f"ntsdumpdir {folder}",
                f"pidfile {folder}/chronyd.pid",
                *more,
                "",
            ]
        )
    )
    return config


@needs("chronyd")
def test_chronyd_authenticates_our_nts_server_once(lab, tmp_path):
    folder = private_folder(tmp_path, "client")
    with our_nts_server(lab, tmp_path) as ports:
        config = client_config(folder, ports, lab.ca, "cmdport 0")
        result = run(
            "chronyd", "-Q", "-d", "-u", "root", "-t", "10", "-f", str(config),
            timeout=30,
        )  # fmt: skip
    said = result.stdout + result.stderr
    found = CHRONY_OFFSET.search(said)
    assert found, said  # an NTS source: only an authenticated reply counts
    print(f"chronyd -Q over NTS: {found[0]}")
    assert abs(float(found[1])) < 0.005  # one machine's clock
    assert (folder / "127.0.0.1.nts").exists()  # the keys and cookies it kept


@needs("chronyd")  # chronyc comes with it
def test_a_chronyd_client_polls_our_nts_server_authenticated(lab, tmp_path):
    folder = private_folder(tmp_path, "client")
    socket_path = folder / "chronyd.sock"
    with our_nts_server(lab, tmp_path) as ports:
        config = client_config(
            folder, ports, lab.ca, f"bindcmdaddress {socket_path}", "cmdport 0"
        )
        command = ("chronyd", "-d", "-x", "-u", "root", "-f", str(config))
        with started(*command) as chronyd:
            for _ in range(100):  # its log, until it has taken our time
                line = readline_within(chronyd.stdout, 30)
                if "Selected source" in line or not line:
                    break
            assert "Selected source 127.0.0.1" in line, line
            data = run("chronyc", "-h", str(socket_path), "-n", "ntpdata").stdout
            stats = run("chronyc", "-h", str(socket_path), "-n", "authdata").stdout
    print(data)
    assert re.search(r"Authenticated\s*:\s*Yes", data), data
    assert re.search(r"127\.0\.0\.1\s+NTS\s+1\s+15", stats), stats  # KE'd, AEAD 15


@pytest.mark.slow
@needs("chronyd")
def test_chronyd_keeps_authenticating_across_rotations_and_workers(lab, tmp_path):
    """Keys rotating every second while chronyd's cookies are out, two
    workers taking its requests in turn: no NAK, every reply authenticated."""
    folder = private_folder(tmp_path, "client")
    socket_path = folder / "chronyd.sock"
    more = ("--nts-rotate", "1", "--workers", "2", "--no-rate-limit")
    with our_nts_server(lab, tmp_path, *more) as ports:
        config = client_config(
            folder, ports, lab.ca, f"bindcmdaddress {socket_path}", "cmdport 0"
        )
        command = ("chronyd", "-d", "-x", "-u", "root", "-f", str(config))
        with started(*command) as chronyd:
            with pytest.raises(subprocess.TimeoutExpired):  # 8 rotations and more
                chronyd.wait(8)
            data = run("chronyc", "-h", str(socket_path), "-n", "ntpdata").stdout
            stats = run("chronyc", "-h", str(socket_path), "-n", "authdata").stdout
    print(data, stats)
    assert re.search(r"Authenticated\s*:\s*Yes", data), data
    valid = int(re.search(r"Total valid RX\s*:\s*(\d+)", data)[1])
    assert valid >= 60  # 16 a second, all authenticated
    # Name/IP address  Mode KeyID Type KLen Last Atmp  NAK Cook CLen
    row = next(line.split() for line in stats.splitlines() if "127.0.0.1" in line)
    assert row[1] == "NTS" and row[7] == "0", stats  # no NAK, ever


def chronyd_nts_server(lab, folder: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    ports = {"ntp": free_port(), "nts-ke": free_port(kind=socket.SOCK_STREAM)}
    config = folder / "server.conf"
    config.write_text(
        "\n".join(
            [
                f"port {ports['ntp']}",
                f"ntsport {ports['nts-ke']}",
                f"ntsserverkey {lab.key}",
                f"ntsservercert {lab.cert}",
                f"ntsdumpdir {folder}",
                "local stratum 10",
                "allow 127.0.0.1",
                "bindaddress 127.0.0.1",
                "cmdport 0",
                f"pidfile {folder}/chronyd.pid",
                "",
            ]
        )
    )
    return ("chronyd", "-d", "-x", "-u", "root", "-f", str(config)), ports


@contextlib.contextmanager
def daemon(*command: str) -> Iterator[subprocess.Popen]:
    """A daemon in the foreground, ended by its own pid: chronyd serving NTS
    has a helper process, which it ends itself."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=TIMEOUT)


@needs("chronyd")
def test_our_client_and_skew_authenticate_chronyds_nts_server(lab, tmp_path):
    command, ports = chronyd_nts_server(lab, private_folder(tmp_path, "server"))
    with daemon(*command):
        request = ntp.request_packet(0)
        wait_for_udp(ports["ntp"], request)  # it serves: its KE port is open too
        ke = f"127.0.0.1:{ports['nts-ke']}"
        asked = run(
            sys.executable, "-m", "timeservice.client", "--protocol", "nts",
            "--ca", lab.ca, ke, "--offset", "--burst", "--json",
        )  # fmt: skip
        checked = run(
            sys.executable, "-m", "timeservice.skew", "--ca", lab.ca, "--burst",
            f"nts://{ke}", "--json",
        )  # fmt: skip
        untrusted = run(
            sys.executable, "-m", "timeservice.client", "--protocol", "nts", ke
        )
    assert asked.returncode == 0, asked.stderr
    figures = json.loads(asked.stdout)
    print(f"our NTS client against chronyd: {figures['offset']:+.6f} s")
    assert abs(figures["offset"]) <= figures["error"] < 0.01
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["targets"][0]["verdict"] == "agrees"
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr  # not the system's CA
    assert untrusted.stderr.count("\n") == 1


@needs("chronyd")
def test_a_key_establishment_with_chronyd_waits_for_no_delayed_ack(lab, tmp_path):
    """TLS 1.3 writes its Finished and the request apart: with Nagle's
    algorithm on, the request waited for chronyd's delayed ACK (40 ms on
    Linux), 44 ms an exchange where the handshake takes 2."""
    command, ports = chronyd_nts_server(lab, private_folder(tmp_path, "server"))
    with daemon(*command):
        wait_for_udp(ports["ntp"], ntp.request_packet(0))
        took = []
        for _ in range(5):
            started_at = time.monotonic()
            establish("127.0.0.1", ports["nts-ke"], ca=lab.ca, timeout=TIMEOUT)
            took.append(time.monotonic() - started_at)
    print(f"Key Establishments with chronyd: {sorted(took)} s")
    assert statistics.median(took) < 0.040  # no exchange waits on a delayed ACK


@pytest.mark.slow
@needs("chronyd")
@needs("useradd")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a user of its own")
def test_a_reload_as_the_service_user_keeps_chronyds_cookies(
    lab, tmp_path, monkeypatch
):
    """An ACME renewal: the certificate and key replaced in place, readable
    by the service's group, and SIGHUP to a server (two workers) that has
    dropped root. New clients meet the new certificate; chronyd, holding
    cookies from before, goes on authenticated with no NAK."""
    # Measured by coverage, the server would try to write its data as the user.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    (tmp_path / "second").mkdir()
    renewed = make_lab(tmp_path / "second")
    client = private_folder(tmp_path, "client")
    socket_path = client / "chronyd.sock"
    with a_user_of_the_tests_own() as user, tempfile.TemporaryDirectory() as shared:
        folder = Path(shared)  # /tmp: one the service's user can reach
        folder.chmod(0o755)
        uid, group = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        cert, key = folder / "cert.pem", folder / "key.pem"
        for path, source in ((cert, lab.cert), (key, lab.key)):
            shutil.copyfile(source, path)
            os.chown(path, 0, group)  # root's, readable by the service's group
            path.chmod(0o640)
        config = folder / "timeservice.toml"
        config.write_text(
            f"no_line = true\nntp = 0\nlocal_stratum = 10\nnts_ke = 0\n"
            f'nts_cert = "{cert}"\nnts_key = "{key}"\n'
            f'nts_cookie_keys = "{folder / "keys"}"\nuser = "{user}"\nworkers = 2\n'
            "no_rate_limit = true\n"
        )
        config.chmod(0o644)
        command = [sys.executable, "-m", "timeservice.server", "-v"]
        command += ["--config", str(config)]  # -v: the workers say they reloaded
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            ports = {}
            for _ in range(2):
                found = until(
                    process.stdout, re.compile(r"Serving (NTP|NTS-KE) on .* port (\d+)")
                )
                ports[found[1]] = int(found[2])
            until(process.stdout, re.compile(f"Serving as user {user}"))
            config_text = client_config(
                client, {"ntp": ports["NTP"], "nts-ke": ports["NTS-KE"]}, lab.ca,
                f"bindcmdaddress {socket_path}", "cmdport 0",
            )  # fmt: skip
            chronyd_command = (
                "chronyd",
                "-d",
                "-x",
                "-u",
                "root",
                "-f",
                str(config_text),
            )
            with started(*chronyd_command) as chronyd:
                for _ in range(100):
                    line = readline_within(chronyd.stdout, 30)
                    if "Selected source" in line or not line:
                        break
                assert "Selected source 127.0.0.1" in line, line
                shutil.copyfile(renewed.cert, cert)  # in place: owner and mode kept
                shutil.copyfile(renewed.key, key)
                process.send_signal(signal.SIGHUP)
                reloaded = re.compile(r"(worker reloaded|SIGHUP received; reloaded) ")
                for _ in range(3):  # the parent and both workers, in any order
                    until(process.stderr, reloaded, lines=200)
                session = establish("127.0.0.1", ports["NTS-KE"], ca=renewed.ca)
                assert abs(ask_nts_once(session).offset) < 0.01
                with pytest.raises(TlsError):  # the old CA no longer vouches
                    establish("127.0.0.1", ports["NTS-KE"], ca=lab.ca)
                with pytest.raises(subprocess.TimeoutExpired):  # 16 polls a second
                    chronyd.wait(3)
                data = run("chronyc", "-h", str(socket_path), "-n", "ntpdata").stdout
                stats = run("chronyc", "-h", str(socket_path), "-n", "authdata").stdout
        finally:
            process.terminate()
            _, err = process.communicate(timeout=TIMEOUT)
        owner = (folder / "keys").stat().st_uid
    print(data, stats)
    assert "Traceback" not in err and "reload failed" not in err, err
    assert owner == uid  # the secret is the service's state: handed over
    assert re.search(r"Authenticated\s*:\s*Yes", data), data
    assert int(re.search(r"Total valid RX\s*:\s*(\d+)", data)[1]) >= 40
    row = next(line.split() for line in stats.splitlines() if "127.0.0.1" in line)
    # Name/IP address  Mode KeyID Type KLen Last Atmp  NAK Cook CLen
    assert row[1] == "NTS" and row[7] == "0", stats  # no NAK, ever
    assert int(row[5]) >= 3  # its last Key Establishment was before the reload
