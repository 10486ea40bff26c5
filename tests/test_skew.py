"""timeservice.skew: the intersection worked by hand, then many servers at once,
shifted with faketime, and programs nobody here wrote among them."""

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
    readline_within,
    server_process,
    signal_launched,
)

from timeservice.clock import kernel as kernelclock
from timeservice.programs import skew as skew_program
from timeservice.server import NtpServer, TimeServer
from timeservice.skew import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Failure,
    Reading,
    Target,
    intersection,
    judge,
    parse_target,
)
from timeservice.wire import ntp

# Targets


@pytest.mark.parametrize(
    "text, protocol, host, port",
    [
        ("192.0.2.1", "line", "192.0.2.1", 8037),
        ("192.0.2.1:9000", "line", "192.0.2.1", 9000),
        ("ntp://time.example", "ntp", "time.example", 123),
        ("ntp://[2001:db8::1]:123", "ntp", "2001:db8::1", 123),
        ("time://[2001:db8::1]", "time", "2001:db8::1", 37),
        ("daytime://host:13", "daytime", "host", 13),
        ("line://[::1]:8037", "line", "::1", 8037),
    ],
)
def test_targets(text, protocol, host, port):
    assert parse_target(text) == Target(text, protocol, host, port)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("smtp://host", "unknown protocol 'smtp'"),
        ("2001:db8::1", "brackets"),
        ("ntp://[2001:db8::1", "brackets"),
        ("ntp://[2001:db8::1]x", "brackets"),
        ("ntp://:123", "no host"),
        ("host:http", "not a port number: 'http'"),
        ("host:65536", "not a port number"),
    ],
)
def test_bad_targets(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_target(text)


# The intersection, RFC 5905 section 11.2.1, by hand


@pytest.mark.parametrize(
    "intervals, expected",
    [
        # One target: its own interval.
        ([(-1, 1)], (-1, 1)),
        # Two that overlap: what they share.
        ([(-1, 1), (0, 2)], (0, 1)),
        # Two that do not: no majority of two.
        ([(0, 1), (2, 3)], None),
        # Two that touch at one point: no interval of any width.
        ([(0, 1), (1, 2)], None),
        # Three, one far off: f = 0 fails (no point is in all three); with
        # f = 1 the scans stop at 0 (two lows) and 1 (two highs), and one
        # midpoint (A's, at 0) lies outside: 1 <= f.
        ([(-1, 1), (0, 2), (10, 12)], (0, 1)),
        # Nested: all three share [0.5, 0.6], but two midpoints (0, 0) lie
        # outside it, more than f = 0 allows; with f = 1 the interval is
        # the outer two's [-1, 1].
        ([(-10, 10), (-1, 1), (0.5, 0.6)], (-1, 1)),
        # Two against two: no majority.
        ([(0, 1), (0.5, 1.5), (10, 11), (10.5, 11.5)], None),
        # Three against two: with f = 2 the scans stop at 1 and 2, and the
        # two midpoints met on the way (11, 10.5) are no more than f.
        ([(0, 2), (0.5, 2.5), (1, 3), (10, 11), (10.5, 11.5)], (1, 2)),
        # The same with narrower three: [0.8, 1] would be shared by three,
        # but four midpoints (0.5, 1.4, 10.5, 11) lie outside it, more than
        # f = 2. RFC 5905 asks more than Marzullo's algorithm here: no majority.
        ([(0, 1), (0.5, 1.5), (0.8, 2), (10, 11), (10.5, 11.5)], None),
        # Ties: the same interval three times.
        ([(0, 1), (0, 1), (0, 1)], (0, 1)),
        # Three touching the same point and a fourth holding it: the point
        # has no width, so the widest agreement that has some is kept.
        ([(-1, 0), (0, 1), (-2, 2)], (-1, 1)),
    ],
)
def test_the_intersection_by_hand(intervals, expected):
    assert intersection(intervals) == expected


def reading(name: str, offset: float, bound: float = 0.001) -> Reading:
    return Reading(Target(name, "line", name, 8037), offset, bound, bound * 2)


def test_a_falseticker_is_named_and_spoils_nothing_else():
    readings = [
        reading("a", 0.0),
        reading("b", 0.003),
        reading("c", -0.002),
        reading("d", 5.0),
    ]
    verdict = judge(readings, warning=0.1, critical=1.0)
    assert [r.target.text for r in verdict.false] == ["d"]
    # Each interval is at least +-10 ms wide (the tolerance): [-0.01, 0.01],
    # [-0.007, 0.013], [-0.012, 0.008] share [-0.007, 0.008], and all three
    # midpoints lie inside it; d's [4.99, 5.01] misses it.
    assert verdict.majority == pytest.approx((-0.007, 0.008))
    assert verdict.distance == 0  # zero is inside it
    assert verdict.skew == pytest.approx(5.002 - 0.002)  # c to d, less both bounds
    assert verdict.status == CRITICAL
    assert verdict.summary.startswith("d is at least 5.000000 s ahead of c;")
    assert "falseticker d" in verdict.summary
    without = judge(readings[:3], warning=0.1, critical=1.0)
    assert without.status == OK and without.false == ()
    assert without.skew == pytest.approx(0.005 - 0.002)


def test_the_thresholds():
    # 0.5 s apart, bounds of 1 ms: with a tolerance of 1 s they agree,
    # and they are at least 0.498 s apart.
    two = [reading("a", 0.0), reading("b", 0.5)]
    assert judge(two, 0.6, 1.0, tolerance=1.0).status == OK
    assert judge(two, 0.4, 1.0, tolerance=1.0).status == WARNING
    assert judge(two, 0.1, 0.4, tolerance=1.0).status == CRITICAL
    assert judge(two, 0.1, 0.4, tolerance=1.0).skew == pytest.approx(0.498)
    # Bounds wider than the skew prove nothing: no alarm.
    vague = [reading("a", 0.0, 0.6), reading("b", 0.5, 0.6)]
    assert judge(vague, 0.1, 0.4).skew == 0
    assert judge(vague, 0.1, 0.4).status == OK
    # Agreeing among themselves, but far from this clock: [1.991, 2.01].
    far = [reading("a", 2.0), reading("b", 2.001)]
    verdict = judge(far, warning=0.1, critical=1.0)
    assert verdict.status == CRITICAL
    assert verdict.distance == pytest.approx(1.991)
    assert "this clock is at least 1.991000 s off the majority" in verdict.summary


def test_two_targets_agree_only_if_each_is_inside_the_others_interval():
    # RFC 5905's midpoint rule: [-0.3, 0.3] and [0.2, 0.8] overlap, but
    # neither offset lies in the other's interval.
    assert (
        judge([reading("a", 0.0, 0.3), reading("b", 0.5, 0.3)], 1, 2).majority is None
    )
    # The tolerance widens narrow bounds: 5 ms apart agree at 10 ms, not at 1 ms.
    close = [reading("a", 0.0, 0.0001), reading("b", 0.005, 0.0001)]
    assert judge(close, 1, 2).majority == pytest.approx((-0.005, 0.01))
    assert judge(close, 1, 2, tolerance=0.001).status == UNKNOWN


def test_nothing_answered_is_unknown():
    down = Failure(Target("a", "line", "a", 1), "unreachable", "connection refused")
    assert judge([down], 0.1, 1.0).status == UNKNOWN
    assert judge([], 0.1, 1.0).status == UNKNOWN


def test_without_a_majority_the_status_follows_the_skew_proven():
    # Which of two is wrong cannot be told; that they are apart can.
    split = [reading("a", 0.0), reading("b", 1.0)]
    verdict = judge(split, 0.1, 1.0)
    assert verdict.status == WARNING
    assert verdict.summary.startswith("no majority: the 2 answers do not agree; ")
    assert "b is at least 0.99" in verdict.summary
    assert verdict.skew == pytest.approx(1.0, abs=0.01)
    far = judge([reading("a", 0.0), reading("b", 10.0)], 0.1, 1.0)
    assert far.status == CRITICAL and far.skew == pytest.approx(10.0, abs=0.01)
    assert "skew=9.99" in skew_program.status_line(far, 0.1, 1.0)


def test_one_target_agrees_with_itself():
    verdict = judge([reading("a", 0.25)], 0.1, 1.0)
    assert verdict.majority == pytest.approx((0.24, 0.26))
    assert verdict.skew == 0.0
    assert verdict.status == WARNING  # this clock is at least 0.24 s from it
    assert (
        "largest skew among those that agree: none (one target)"
        in skew_program.report(verdict)
    )


def test_an_unreachable_target_is_reported_and_spoils_nothing():
    down = Failure(Target("x", "ntp", "x", 123), "unreachable", "no answer within 1 s")
    verdict = judge([reading("a", 0.0), down, reading("b", 0.001)], 0.1, 1.0)
    assert verdict.status == OK
    assert verdict.summary.endswith("1 without a reading")
    rows = skew_program.report(verdict)
    assert rows[2].split() == [
        "x",
        "ntp",
        "-",
        "-",
        "-",
        "unreachable",
        "(no",
        "answer",
        "within",
        "1",
        "s)",
    ]


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
    assert skew_program.main([*targets, "-n", "2"]) == OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SKEW OK: ")
    assert "3 of 3 agree; 1 without a reading | skew=" in out[0]
    assert out[0].endswith("failed=1;;;0;4")
    assert out[1].split()[:6] == ["target", "protocol", "offset", "s", "bound", "s"]
    assert out[5].startswith(targets[3])
    assert out[5].endswith("unreachable (connection refused)")
    assert out[6] == ""
    assert out[-2].startswith("this clock: agrees with the majority")


def test_bad_targets_are_one_line_each_and_the_rest_still_run(line_servers, capsys):
    port = line_servers(1)[0]
    code = skew_program.main(
        ["smtp://x", f"127.0.0.1:{port}", "nowhere.invalid", "--json"]
    )
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors[0].endswith(
        "bad target 'smtp://x': unknown protocol 'smtp' "
        "(one of line, daytime, time, ntp)"
    )
    assert "bad target 'nowhere.invalid': cannot resolve" in errors[1]
    assert len(errors) == 2
    report = json.loads(captured.out)
    assert code == OK == report["code"]
    assert [t["target"] for t in report["targets"]] == [f"127.0.0.1:{port}"]


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
    assert "Traceback" not in captured.err
    errors = captured.err.splitlines()
    assert len(errors) == 2 and all("cannot resolve" in line for line in errors)
    report = json.loads(captured.out)
    assert code == OK == report["code"]


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
    assert runs["good and down"].returncode == OK
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
    chronyd = ("faketime", "-f", "+0.001s", "chronyd", "-d", "-x", "-u", "root")
    xinetd = (*faketime("-0.001s"), "xinetd", "-dontfork", "-stayalive")
    xinetd += ("-pidfile", str(tmp_path / "xinetd.pid"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(started(*chronyd, "-f", str(config)))
        stack.enter_context(started(*xinetd, "-f", str(tmp_path / "xinetd.conf")))
        shifts = ("+0s", "+0.003s", "-0.002s", "+5s")
        ours = [stack.enter_context(shifted_server(s)) for s in shifts]
        request = ntp.request_packet(0)
        wait_for_udp(chrony_port, request, synchronised_reply(request))
        wait_for_udp(time_port, b"")  # xinetd opens every service at once
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
