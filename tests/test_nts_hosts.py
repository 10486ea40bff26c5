"""NTS across hosts, judged by chronyd: a Key Establishment server on one
host sends chronyd to an NTP address that a balancer moves between two
other hosts, each with only the cookie secret, never a certificate. The
hosts are network namespaces of the test's own on one switch; no clock is
set (``-x``)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, in_namespace, ip, lan, needs_netns, readline_within
from test_interop import needs, run, started
from test_nts_interop import private_folder

pytestmark = needs_netns

SERVICE = "192.0.2.10"  # the NTP address the balancer moves
METRICS = "127.0.0.1:9100"  # each host's own loopback

FETCH = f"""
import urllib.request
print(urllib.request.urlopen("http://{METRICS}/metrics", timeout=10).read().decode())
"""


@contextlib.contextmanager
def served_in(host: str, *options: str) -> Iterator[subprocess.Popen]:
    """This project's server in namespace `host`, ended by its pid."""
    command = ["ip", "netns", "exec", host, sys.executable, "-m", "timeservice.server"]
    process = subprocess.Popen(
        [*command, "--no-line", "--local-stratum", "10", "--metrics", METRICS,
         "--no-rate-limit", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert readline_within(process.stdout).startswith("Serving NTP"), options
        yield process
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
        assert "Traceback" not in err, err


def counted(host: str, name: str, result: str = "") -> int:
    """A counter from the metrics of the server in `host`, summed over its
    labels (only those with result=`result`, if given)."""
    text = in_namespace(host, FETCH)
    label = f'result="{result}"' if result else ""
    pattern = rf"^{name}(?:\{{[^}}]*{label}[^}}]*\}})? (\d+)$"
    return sum(int(found) for found in re.findall(pattern, text, re.MULTILINE))


@needs("chronyd")  # chronyc comes with it
def test_chronyd_keeps_its_cookies_when_a_balancer_moves_it_to_another_host(
    lab, tmp_path
):
    from timeservice.nts.cookies import save

    secret = tmp_path / "nts-cookie-keys"
    save(str(secret), os.urandom(32))  # as the operator copies it to each host
    folder = private_folder(tmp_path, "client")
    socket_path = folder / "chronyd.sock"
    config = folder / "chrony.conf"
    with lan(4) as ((ke, ke_address), (first, _), (second, _), (client, _)):
        # Each NTP host binds the service's address before it holds it, as
        # hosts behind a balancer that moves a virtual address do.
        for host in (first, second):
            nonlocal_bind = ["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]
            subprocess.run(
                ["ip", "netns", "exec", host, *nonlocal_bind],
                check=True, capture_output=True, timeout=TIMEOUT,
            )  # fmt: skip
        ip("-n", first, "addr", "add", f"{SERVICE}/24", "dev", "eth0")
        config.write_text(
            f"server {ke_address} nts iburst minpoll -4 maxpoll -4\n"
            f"ntstrustedcerts {lab.ca}\nntsdumpdir {folder}\n"
            f"bindcmdaddress {socket_path}\ncmdport 0\npidfile {folder}/chronyd.pid\n"
        )
        nts = ("--nts-cookie-keys", str(secret))
        with (
            served_in(
                ke, "--bind", ke_address, "--ntp", "123", "--nts-ke", "4460",
                "--nts-cert", lab.cert, "--nts-key", lab.key,
                "--nts-server", SERVICE, *nts,
            ),
            served_in(first, "--bind", SERVICE, "--ntp", "123", *nts),
            served_in(second, "--bind", SERVICE, "--ntp", "123", *nts),
        ):  # fmt: skip
            command = ("chronyd", "-d", "-x", "-u", "root", "-f", str(config))
            with started("ip", "netns", "exec", client, *command) as chronyd:
                for _ in range(100):  # its log, until it has taken the time
                    line = readline_within(chronyd.stdout, 30)
                    if "Selected source" in line or not line:
                        break
                assert f"Selected source {SERVICE}" in line, line
                before = counted(
                    first, "timeservice_nts_requests_total", "authenticated"
                )
                assert before > 0
                # The balancer sends the service's address to the other host.
                ip("-n", first, "addr", "del", f"{SERVICE}/24", "dev", "eth0")
                ip("-n", second, "addr", "add", f"{SERVICE}/24", "dev", "eth0")
                ip("-n", client, "neigh", "flush", "all")
                moved = 0
                for _ in range(40):  # 16 requests a second: 32 within 20 s
                    with pytest.raises(subprocess.TimeoutExpired):
                        chronyd.wait(0.5)  # it keeps running meanwhile
                    moved = counted(
                        second, "timeservice_nts_requests_total", "authenticated"
                    )
                    if moved >= 32:
                        break
                data = run("chronyc", "-h", str(socket_path), "-n", "ntpdata").stdout
                stats = run("chronyc", "-h", str(socket_path), "-n", "authdata").stdout
                exchanges = counted(ke, "timeservice_nts_ke_exchanges_total")
                naks = counted(second, "timeservice_nts_requests_total", "nak")
    print(data, stats)
    assert moved >= 32  # the second host opened the first one's cookies
    assert naks == 0 and exchanges == 1  # none refused; no new Key Establishment
    assert re.search(r"Authenticated\s*:\s*Yes", data), data
    assert re.search(rf"Remote address\s*:\s*{re.escape(SERVICE)}\b", data), data
    # Name/IP address  Mode KeyID Type KLen Last Atmp  NAK Cook CLen
    row = next(line.split() for line in stats.splitlines() if SERVICE in line)
    assert row[1] == "NTS" and row[7] == "0", stats  # no NAK, ever
    assert Path(secret).stat().st_mode & 0o077 == 0  # the secret stays private
