"""Time as exact as chronyd serves it, judged by chronyd as a client.

One chronyd polls our server (127.0.0.1) and chronyd's own server
(127.0.0.2: chronyd takes one source per address) side by side, 16 times a
second, both serving this machine's clock at stratum 10, for a bounded
window; no clock is touched (-x). What it keeps of each (good RX of valid
RX, from ``chronyc ntpdata``) and the offset it measures (``chronyc
sourcestats``) are compared: both servers read one clock, so an offset is
a bias. In interleaved mode (``xleave``) our replies carry the kernel's
transmit times, as chronyd's do. In basic mode a second chronyd server
(127.0.0.3), polled in interleaved mode, gives the reference: with the
kernel's transmit times, its offset is the clock both read as nearly as
chronyd can measure it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import readline_within, server_process
from test_interop import chrony_config, free_port, needs, run, started

from timeservice.host import capabilities
from timeservice.wire import ntp, ntp_checks

WINDOW = 30.0  # seconds of polling: about 470 samples of each server
# Our server runs untraced, as it is deployed: under the suite's coverage
# (which follows subprocesses) each line it runs costs more, the moment
# written to the send too, and chronyd kept 283 of 464 basic samples.
UNTRACED = {"COVERAGE_PROCESS_START": "", "COVERAGE_PROCESS_CONFIG": ""}
THEIRS = "127.0.0.2"
REFERENCE = "127.0.0.3"
ADDRESSES = {"ours": "127.0.0.1", "theirs": THEIRS, "reference": REFERENCE}


def answered_at(host: str, port: int) -> None:
    """Wait until the NTP server at `host` answers a synchronised reply: a
    0.2 s wait on the socket for each try, 15 s at the most."""
    request = ntp.request_packet(0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(75):
            sock.sendto(request, (host, port))
            with contextlib.suppress(TimeoutError, ntp.NtpError):
                ntp_checks.check_reply(sock.recv(512), request)
                return
    raise AssertionError(f"nothing answered at {host} port {port}")


@contextlib.contextmanager
def side_by_side(tmp_path: Path, reference: bool = False) -> Iterator[dict[str, int]]:
    """Our server and chronyd's, each serving this clock at stratum 10 (and
    with `reference`, a second chronyd's): their NTP ports, by name."""
    ready = tmp_path / "ready.json"
    ours = (
        "--no-line", "--ntp", "0", "--local-stratum", "10", "--upstream", "none",
        "--no-rate-limit", "-q", "--ready-file", str(ready),
    )  # fmt: skip
    with server_process(*ours, env=UNTRACED) as (process, _):
        served = json.loads(ready.read_text())["serving"]
        ports = {"ours": served[0]["port"]}
        with contextlib.ExitStack() as stack:
            for name in ("theirs", "reference") if reference else ("theirs",):
                ports[name] = free_port()
                folder = tmp_path / name
                folder.mkdir()
                config = chrony_config(
                    folder,
                    "local stratum 10",
                    f"port {ports[name]}",
                    f"bindaddress {ADDRESSES[name]}",
                    "allow 127.0.0.0/8",
                )
                chronyd = ("chronyd", "-d", "-x", "-u", "root", "-f", str(config))
                stack.enter_context(started(*chronyd))
                answered_at(ADDRESSES[name], ports[name])
            yield ports
        process.terminate()
        assert process.wait(10) == 0


def field(text: str, name: str) -> str:
    found = re.search(rf"^{name}\s*:\s*(.+)$", text, re.MULTILINE)
    assert found, f"no {name} in {text}"
    return found[1].strip()


UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def offset_of(sourcestats: str, address: str) -> tuple[float, float]:
    """The offset and its standard deviation that ``chronyc -n sourcestats``
    gives for `address`, in seconds."""
    for line in sourcestats.splitlines():
        words = line.split()
        if words and words[0] == address:
            values = []
            for word in words[-2:]:
                number, unit = re.fullmatch(r"([+-]?[\d.]+)(ns|us|ms|s)", word).groups()
                values.append(float(number) * UNITS[unit])
            return values[0], values[1]
    raise AssertionError(f"no {address} in {sourcestats}")


def polled(tmp_path: Path, ports: dict[str, int], xleave: bool) -> dict:
    """Have one chronyd poll the servers for WINDOW seconds, ours and
    chronyd's in basic or interleaved mode and a reference always in
    interleaved mode: what ``chronyc`` then says of each."""
    folder = tmp_path / ("xleave" if xleave else "basic")
    folder.mkdir(mode=0o700)  # chronyd wants its socket's folder private
    sock = folder / "chronyd.sock"
    sources = [
        f"server {ADDRESSES[name]} port {port} minpoll -4 maxpoll -4"
        + (" xleave" if xleave or name == "reference" else "")
        for name, port in ports.items()
    ]
    config = chrony_config(folder, *sources, "port 0", f"bindcmdaddress {sock}")
    with started("chronyd", "-d", "-x", "-u", "root", "-f", str(config)) as client:
        readline_within(client.stdout, 30)  # its first line: it has started
        with pytest.raises(subprocess.TimeoutExpired):  # it polls for the window
            client.wait(WINDOW)
        chronyc = ("chronyc", "-h", str(sock), "-n")
        found = {"sourcestats": run(*chronyc, "sourcestats").stdout}
        for name in ports:
            found[name] = run(*chronyc, "ntpdata", ADDRESSES[name]).stdout
    print(found["sourcestats"])
    for name in ports:
        data = found[name]
        valid = int(field(data, "Total valid RX"))
        good = int(field(data, "Total good RX"))
        address = field(data, "Remote address").split()[0]
        found[f"{name} kept"] = good / valid
        found[f"{name} offset"] = offset_of(found["sourcestats"], address)
        print(
            f"{name}: {good} of {valid} kept, peer delay {field(data, 'Peer delay')}, "
            f"interleaved {field(data, 'Interleaved')}, "
            f"offset {found[f'{name} offset'][0] * 1e6:+.3f} µs"
        )
    return found


needs_transmit_times = pytest.mark.skipif(
    not capabilities.TRANSMIT_TIMESTAMPS,
    reason="needs the kernel's transmit times (Linux's SO_TIMESTAMPING)",
)


@pytest.mark.slow
@needs("chronyd")
@needs_transmit_times
def test_in_interleaved_mode_chronyd_keeps_ours_as_its_own(tmp_path):
    with side_by_side(tmp_path) as ports:
        found = polled(tmp_path, ports, xleave=True)
    assert field(found["ours"], "Interleaved") == "Yes"
    assert found["ours kept"] >= 0.9 * found["theirs kept"]
    ours, theirs = found["ours offset"][0], found["theirs offset"][0]
    assert abs(ours - theirs) <= 1e-6, (ours, theirs)


@pytest.mark.slow
@needs("chronyd")
@pytest.mark.skipif(
    not capabilities.RECEIVE_TIMESTAMPS,
    reason="needs the kernel's receive times: one read in Python is late by "
    "the server's wake-up, a tenth of a millisecond and more",
)
def test_in_basic_mode_chronyd_keeps_ours_as_its_own_and_sees_it_as_near(tmp_path):
    """A basic reply from idle is readied (a send to a socket of the
    server's own, then run through to the client), written for a moment
    just ahead and sent once the clock has passed it: chronyd keeps as
    many of our samples as of its own server's, and sees ours no further
    from the clock both read than its own server, give or take 1 µs
    (docs/performance.md has the figures, and why ours may be nearer)."""
    with side_by_side(tmp_path, reference=True) as ports:
        found = polled(tmp_path, ports, xleave=False)
    assert field(found["ours"], "Interleaved") == "No"
    assert field(found["reference"], "Interleaved") == "Yes"
    assert found["ours kept"] >= 0.9 * found["theirs kept"]
    ours, theirs, clock = (found[f"{name} offset"][0] for name in ADDRESSES)
    print(f"ours - theirs: {(ours - theirs) * 1e6:+.3f} µs")
    assert abs(ours - clock) <= abs(theirs - clock) + 1e-6, (ours, theirs, clock)
