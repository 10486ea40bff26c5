"""timeservice.skew on the wire, among servers shifted with faketime and
programs nobody here wrote."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import (
    FAKETIME_LIBRARY,
    ROOT,
    TIMEOUT,
    faketime,
    faketime_wrapper,
    readline_within,
    server_process,
    signal_launched,
)

from timeservice.clock import kernel as kernelclock
from timeservice.programs import skew as skew_program
from timeservice.server import NtpServer, TimeServer
from timeservice.skew import CRITICAL, OK, UNKNOWN, WARNING
from timeservice.wire import ntp

# On the wire


@pytest.fixture
def line_servers(serving):
    def start(count: int) -> list[int]:
        return [
            serving(TimeServer(("127.0.0.1", 0))).server_address[1]
            for _ in range(count)
        ]

    return start


def run_skew(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "timeservice.skew", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def test_servers_on_one_clock_agree(line_servers, capsys):
    ports = line_servers(3)
    targets = [f"127.0.0.1:{port}" for port in ports]
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        targets.append(f"127.0.0.1:{closed.getsockname()[1]}")
    assert skew_program.main([*targets, "-n", "2", "--ignore-unreachable"]) == OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SKEW OK: ")
    assert "3 of 3 agree; 1 without a reading | skew=" in out[0]
    assert out[0].endswith("failed=1;;;0;4")
    assert out[1].split()[:6] == ["target", "protocol", "offset", "s", "bound", "s"]
    assert out[5].startswith(targets[3])
    assert out[5].endswith("unreachable (connection refused)")
    assert out[6] == ""
    assert out[-2].startswith("this clock: agrees with the majority")


def test_a_target_that_cannot_be_parsed_is_a_usage_error_and_nothing_is_asked(
    capsys,
):
    with pytest.raises(SystemExit) as exited:
        skew_program.main(["127.0.0.1:1", "smtp://x"])
    assert exited.value.code == UNKNOWN
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, as every usage error
    assert (
        "error: bad target 'smtp://x': unknown protocol 'smtp' "
        "(one of line, daytime, time, ntp, nts) (see python -m timeservice.skew --help)"
    ) in err


@pytest.mark.parametrize(
    "unreached",
    [["nowhere.invalid"], ["127.0.0.1:1", "127.0.0.1:2"]],
)
def test_a_target_never_reached_makes_the_status_a_warning(
    line_servers, capsys, unreached
):
    port = line_servers(1)[0]
    targets = [f"127.0.0.1:{port}", *unreached]
    code = skew_program.main([*targets, "--json"])  # 2.0.0: SKEW OK, exit 0
    report = json.loads(capsys.readouterr().out)
    assert code == WARNING == report["code"]
    assert "not reached: " + ", ".join(unreached) in report["summary"]
    verdicts = [t["verdict"] for t in report["targets"][1:]]
    assert all(v in ("unresolvable", "unreachable") for v in verdicts)
    assert skew_program.main([*targets, "--ignore-unreachable", "--json"]) == OK
    capsys.readouterr()


@contextlib.contextmanager
def saying(text: bytes) -> Iterator[int]:
    """A TCP port that sends `text` to each connection, then closes it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    return
                with conn:
                    conn.sendall(text)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            with contextlib.suppress(OSError):  # wake accept() for its last turn
                socket.create_connection(
                    listener.getsockname(), timeout=TIMEOUT
                ).close()
            thread.join(TIMEOUT)


def test_a_name_idna_refuses_is_one_row_and_the_rest_still_run(line_servers, capsys):
    port = line_servers(1)[0]
    label = "x" * 64  # DNS allows 63
    code = skew_program.main(
        ["a..b", f"{label}.example", f"127.0.0.1:{port}", "--json"]
    )
    captured = capsys.readouterr()
    assert captured.err == ""
    report = json.loads(captured.out)
    rows = report["targets"][:2]
    assert [row["verdict"] for row in rows] == ["unresolvable"] * 2
    assert all("cannot resolve" in row["reason"] for row in rows)
    assert code == WARNING == report["code"]  # not reached: they were named


def test_a_daytime_past_year_9999_is_one_row_and_the_rest_still_run(line_servers):
    port = line_servers(1)[0]
    with saying(b"Fri Dec 31 23:59:59 9999\r\n") as daytime:
        run = run_skew(
            f"daytime://127.0.0.1:{daytime}",
            f"127.0.0.1:{port}",
            "--json",
            env={"TZ": "America/New_York"},  # west of UTC: past 9999 in UTC
        )
    assert "Traceback" not in run.stderr
    report = json.loads(run.stdout)
    assert run.returncode == OK == report["code"]
    verdicts = [t["verdict"] for t in report["targets"]]
    assert verdicts == ["refused", "agrees"]
    assert "cannot read the daytime form" in report["targets"][0]["reason"]


def test_an_ntp_server_too_uncertain_to_use_is_refused(
    line_servers, serving, monkeypatch, capsys
):
    """A server whose clock may be 16 s off would "agree" with a falseticker."""
    vague = kernelclock.KernelState(True, ntp.LEAP_NONE, 16.0)  # maxerror never kept
    monkeypatch.setattr(kernelclock, "read", lambda: vague)
    server = serving(NtpServer(("127.0.0.1", 0), upstream=None))
    target = f"ntp://127.0.0.1:{server.server_address[1]}"
    line = f"127.0.0.1:{line_servers(1)[0]}"
    assert skew_program.main([line, target, "--json", "--burst"]) == OK
    refused = json.loads(capsys.readouterr().out)["targets"][1]
    assert refused["verdict"] == "refused"
    assert "root distance 16.000 s is more than 1 s" in refused["reason"]


def test_everything_unreachable_is_unknown(capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code = skew_program.main(
            [f"127.0.0.1:{port}", f"ntp://127.0.0.1:{port}", "--timeout", "0.2"]
        )
    out = capsys.readouterr().out
    assert code == UNKNOWN
    assert out.startswith("SKEW UNKNOWN: no target answered (2 failed) |")


def test_a_refusal_is_named(start_server, connect, capsys):
    busy = start_server(max_connections=1)
    held = connect(busy)
    held.ask()
    assert skew_program.main([f"127.0.0.1:{busy.server_address[1]}"]) == UNKNOWN
    assert "refused (server answered 'busy')" in capsys.readouterr().out


def test_usage_errors_are_unknown(capsys):
    with pytest.raises(SystemExit) as exit_info:
        skew_program.main(["-c", "-1", "127.0.0.1"])
    assert exit_info.value.code == UNKNOWN
    assert "must be above 0" in capsys.readouterr().err


@pytest.mark.slow
def test_two_hundred_targets_in_a_few_seconds(line_servers):
    ports = line_servers(200)
    started = time.monotonic()
    result = run_skew(*(f"127.0.0.1:{port}" for port in ports), "--json")
    took = time.monotonic() - started
    report = json.loads(result.stdout)
    assert result.returncode == OK, result.stdout
    assert len(report["targets"]) == 200
    assert all(t["verdict"] == "agrees" for t in report["targets"])
    print(
        f"200 line targets on loopback, 4 samples each, 32 at a time: {took:.2f} s "
        "(the interpreter's start-up included)"
    )


# Shifted with faketime, with programs nobody here wrote among them

needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None and FAKETIME_LIBRARY is None,
    reason="needs faketime (Debian: faketime; scripts/test installs it as root)",
)

SERVING_NTP = re.compile(r"Serving NTP on \S+ port (\d+)")


@contextlib.contextmanager
def shifted_server(shift: str) -> Iterator[dict[str, int]]:
    """Our server, line and NTP, its clock shifted by faketime; ports by protocol."""
    launcher = faketime(shift)
    options = ("-q", "--ntp", "0", "--local-stratum", "10")
    with server_process("0", *options, launcher=launcher) as (process, line):
        ntp_port = int(SERVING_NTP.match(readline_within(process.stdout))[1])
        yield {"line": line, "ntp": ntp_port}
        signal_launched(process, signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0


@pytest.mark.slow
@needs_faketime
def test_the_shifted_server_is_the_falseticker():
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(shifted_server(shift))
            for shift in ("+0s", "+0.003s", "-0.002s", "+5s")
        ]
        good = [
            f"127.0.0.1:{servers[0]['line']}",
            f"ntp://127.0.0.1:{servers[1]['ntp']}",
            f"127.0.0.1:{servers[2]['line']}",
        ]
        falseticker = f"ntp://127.0.0.1:{servers[3]['ntp']}"
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            unreachable = f"127.0.0.1:{closed.getsockname()[1]}"
            quick = ("-c", "1", "--burst")  # our own servers: no need to pace
            runs = {
                "all": run_skew(*good, falseticker, *quick, "--json"),
                "good": run_skew(*good, *quick, "--json"),
                "good and down": run_skew(*good, unreachable, *quick, "--json"),
                "table": run_skew(*good, falseticker, unreachable, *quick),
            }
    reports = {
        name: json.loads(run.stdout) for name, run in runs.items() if name != "table"
    }
    every = reports["all"]
    assert runs["all"].returncode == CRITICAL == every["code"]
    verdicts = {t["target"]: t["verdict"] for t in every["targets"]}
    assert verdicts == {**dict.fromkeys(good, "agrees"), falseticker: "falseticker"}
    assert every["majority"]["low"] <= 0 <= every["majority"]["high"]
    offsets = [t["offset"] for t in every["targets"]]
    for offset, shift in zip(offsets, (0, 0.003, -0.002, 5), strict=True):
        assert abs(offset - shift) < 0.001
    # The kernel's receive times are not on a faked clock: not used there.
    assert all(0 < t["delay"] <= t["bound"] * 2 for t in every["targets"])
    assert runs["good"].returncode == OK == reports["good"]["code"]
    assert runs["good and down"].returncode == WARNING  # one never reached
    down = reports["good and down"]["targets"][-1]
    assert down["verdict"] == "unreachable" and down["reason"] == "connection refused"
    print(runs["table"].stdout)
    assert runs["table"].returncode == CRITICAL


@pytest.mark.slow
@needs_faketime
@pytest.mark.skipif(
    shutil.which("chronyd") is None or shutil.which("xinetd") is None,
    reason="needs chronyd and xinetd (Debian: chrony, xinetd; scripts/test "
    "installs them as root)",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="xinetd's services run as root")
def test_chronyd_and_xinetd_among_ours(tmp_path):
    from test_interop import (
        chrony_config,
        free_port,
        started,
        synchronised_reply,
        wait_for_udp,
        xinetd_config,
    )

    chrony_port, time_port = free_port(), free_port(socket.SOCK_STREAM)
    config = chrony_config(
        tmp_path, "local stratum 10", f"port {chrony_port}",
        "bindaddress 127.0.0.1", "allow 127.0.0.1",
    )  # fmt: skip
    (tmp_path / "xinetd.conf").write_text(xinetd_config({"time": time_port}))
    # Preloaded without the wrapper, chronyd answered unshifted here.
    chronyd = (*faketime_wrapper("+0.001s"), "chronyd", "-d", "-x", "-u", "root")
    xinetd = (*faketime("-0.001s"), "xinetd", "-dontfork", "-stayalive")
    xinetd += ("-pidfile", str(tmp_path / "xinetd.pid"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(started(*chronyd, "-f", str(config)))
        stack.enter_context(started(*xinetd, "-f", str(tmp_path / "xinetd.conf")))
        # Both answer before our servers bind: a port of their own is free
        # only until they bind it, and a bind to port 0 may take it.
        request = ntp.request_packet(0)
        wait_for_udp(chrony_port, request, synchronised_reply(request))
        wait_for_udp(time_port, b"")  # xinetd opens every service at once
        shifts = ("+0s", "+0.003s", "-0.002s", "+5s")
        ours = [stack.enter_context(shifted_server(s)) for s in shifts]
        targets = {
            "chronyd": f"ntp://127.0.0.1:{chrony_port}",
            "xinetd": f"time://127.0.0.1:{time_port}",
            "ours": f"127.0.0.1:{ours[0]['line']}",
            "ours, +3 ms": f"127.0.0.1:{ours[1]['line']}",
            "ours, -2 ms": f"ntp://127.0.0.1:{ours[2]['ntp']}",
            "ours, +5 s": f"ntp://127.0.0.1:{ours[3]['ntp']}",
        }
        result = run_skew(*targets.values(), "-c", "1")
        as_json = run_skew(*targets.values(), "-c", "1", "--json")
    print(result.stdout)
    assert result.returncode == CRITICAL == as_json.returncode
    report = json.loads(as_json.stdout)
    verdicts = {t["target"]: t["verdict"] for t in report["targets"]}
    assert verdicts == {
        targets["chronyd"]: "agrees",
        targets["xinetd"]: "agrees",
        targets["ours"]: "agrees",
        targets["ours, +3 ms"]: "agrees",
        targets["ours, -2 ms"]: "agrees",
        targets["ours, +5 s"]: "falseticker",
    }
    assert report["majority"]["low"] <= 0 <= report["majority"]["high"]
    by_target = {t["target"]: t for t in report["targets"]}
    # Shifted by 1 ms; in some runs chronyd's reply carries its kernel's times.
    assert abs(by_target[targets["chronyd"]]["offset"] - 0.001) <= 0.002
    assert by_target[targets["xinetd"]]["bound"] >= 0.5  # whole seconds


def test_an_unsynchronised_server_is_named_so_not_a_kiss(serving, line_servers, capsys):
    unsynchronised = kernelclock.KernelState(False, ntp.LEAP_NONE, 16.0)
    server = serving(
        NtpServer(("127.0.0.1", 0), upstream=None, kernel_state=lambda: unsynchronised)
    )
    port = line_servers(1)[0]
    target = f"ntp://127.0.0.1:{server.server_address[1]}"
    skew_program.main([f"127.0.0.1:{port}", target, "--burst", "--json"])
    row = json.loads(capsys.readouterr().out)["targets"][1]
    assert row["verdict"] == "not synchronised"  # 2.0.0: "refused", a kiss
    assert "leap indicator 3, stratum 0, reference ID 'INIT'" in row["reason"]
