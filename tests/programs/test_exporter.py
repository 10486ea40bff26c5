"""The skew check as a Prometheus exporter (``timeservice.skew --serve``):
probing our servers (one shifted with faketime), an NTS one and a closed
port; /skew finding the shifted one a falseticker; a target it may not
probe refused; a real Prometheus scraping it; the alert rules by promtool."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    faketime,
    needs_nts,
    port_of,
    readline_within,
    server_process,
    until,
)

from timeservice.clients.targets import parse_target
from timeservice.programs.exporter import TargetRules
from timeservice.server import NtpHandler, NtpServer, TimeServer

STARTED = re.compile(r"Serving the exporter on \S+ port (\d+)")
PROMETHEUS = ROOT / "scripts" / "prometheus"


@contextlib.contextmanager
def exporter(*options: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python -m timeservice.skew --serve 0 -v OPTIONS``: it, and its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "timeservice.skew", "--serve", "0", "-v", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = readline_within(process.stdout)
        found = STARTED.search(line)
        assert found, line + process.stderr.read()
        yield process, int(found[1])
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def get(port: int, path: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def probe(port: int, target: str) -> dict[str, float]:
    status, text = get(port, "/probe?" + urllib.parse.urlencode({"target": target}))
    assert status == 200, text
    return values(text)


def values(text: str) -> dict[str, float]:
    """The samples of a scrape, by name with their labels."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@pytest.fixture
def three(serving, tmp_path):
    """Two servers of this clock (NTP, the line protocol) and our NTP server
    under faketime, 2.5 s ahead: their targets."""
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (Debian: faketime; scripts/test installs it)")
    ntp = serving(
        NtpServer(("127.0.0.1", 0), NtpHandler, local_stratum=10, upstream=None)
    )
    line = serving(TimeServer(("127.0.0.1", 0)))
    shifted = (
        "0",
        "--no-line",
        "--ntp",
        "0",
        "--local-stratum",
        "10",
        "--upstream",
        "none",
    )
    with server_process(*shifted[1:], launcher=faketime("+2.5s")) as (process, port):
        yield [
            f"ntp://127.0.0.1:{port_of(ntp)}",
            f"127.0.0.1:{port_of(line)}",
            f"ntp://localhost:{port}",
        ]


def test_probes_read_each_clock_and_a_closed_port_is_no_reading(three):
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    with closed, exporter() as (process, port):
        here = probe(port, three[0])
        assert here["probe_success"] == 1
        assert abs(here["timeservice_probe_offset_seconds"]) < 0.01
        assert here["timeservice_probe_stratum"] == 10
        assert 0 < here["timeservice_probe_delay_seconds"] < 0.1
        line = probe(port, three[1])
        assert line["probe_success"] == 1
        assert "timeservice_probe_stratum" not in line  # not NTP
        ahead = probe(port, three[2])
        offset, bound = (
            ahead[f"timeservice_probe_{n}_seconds"] for n in ("offset", "error")
        )
        assert abs(offset - 2.5) <= bound + 0.01
        gone = probe(port, f"127.0.0.1:{closed.getsockname()[1]}")
        assert gone["probe_success"] == 0
        assert gone['timeservice_probe_failed{verdict="unreachable"}'] == 1
        until(process.stderr, re.compile(r"probed 127\.0\.0\.1:\d+: unreachable"))
        status, text = get(port, "/metrics")
    assert status == 200
    counts = values(text)
    assert (
        counts['timeservice_exporter_probes_total{protocol="ntp",success="true"}'] == 2
    )
    assert (
        counts['timeservice_exporter_probes_total{protocol="line",success="false"}']
        == 1
    )


def test_skew_finds_the_shifted_clock_a_falseticker(three):
    query = urllib.parse.urlencode([("target", t) for t in three])
    with exporter() as (_, port):
        status, text = get(port, f"/skew?{query}")
    assert status == 200, text
    found = values(text)
    assert found["timeservice_skew_majority"] == 1
    assert found["timeservice_skew_status"] == 2  # CRITICAL: 2.5 s past 1 s
    assert 2.4 < found["timeservice_skew_seconds"] < 2.5
    falseticker = "timeservice_skew_target_falseticker{target=%s}"
    assert found[falseticker % json.dumps(three[2])] == 1
    assert found[falseticker % json.dumps(three[0])] == 0
    assert found[falseticker % json.dumps(three[1])] == 0


@needs_nts
def test_an_nts_target_is_probed_with_the_ca_it_is_told(lab, tmp_path):
    ready = tmp_path / "ready.json"
    options = (
        "--no-line", "--ntp", "0", "--local-stratum", "10", "--nts-ke", "0",
        "--nts-cert", lab.cert, "--nts-key", lab.key, "--ready-file", str(ready),
    )  # fmt: skip
    with server_process(*options):
        served = json.loads(ready.read_text())["serving"]
        ke = next(e["port"] for e in served if e["protocol"] == "nts-ke")
        with exporter("--ca", lab.ca) as (_, port):
            found = probe(port, f"nts://localhost:{ke}")
    assert found["probe_success"] == 1
    assert abs(found["timeservice_probe_offset_seconds"]) < 0.01


@pytest.mark.parametrize(
    "path, status",
    [
        ("/probe", 400),  # no target
        ("/probe?target=ntp://127.0.0.1&target=ntp://127.0.0.2", 400),
        ("/probe?target=gopher://127.0.0.1", 400),
        ("/probe?target=ntp://192.0.2.1", 403),  # outside loopback
        ("/probe?target=ntp://ntp.example.net", 403),  # a name not listed
        ("/skew?target=ntp://127.0.0.1&target=ntp://[2001:db8::1]", 403),
        ("/elsewhere", 404),
    ],
)
def test_what_it_may_not_probe_or_cannot_read_is_refused(path, status):
    with exporter() as (_, port):
        got, text = get(port, path)
        assert got == status, text
        if status == 403:  # nothing was probed
            assert "probes_total{" not in get(port, "/metrics")[1]


def test_the_targets_it_may_probe_are_subnets_and_names():
    rules = TargetRules(["10.1.0.0/16", "time.example.net", ".corp.example"])
    assert rules.allows(parse_target("ntp://10.1.2.3"))
    assert rules.allows(parse_target("ntp://[::ffff:10.1.2.3]"))
    assert not rules.allows(parse_target("ntp://10.2.0.1"))
    assert rules.allows(parse_target("nts://TIME.example.net."))
    assert rules.allows(parse_target("ntp://ntp1.corp.example"))
    assert not rules.allows(parse_target("ntp://corp.example.evil"))
    assert not rules.allows(parse_target("ntp://localhost"))  # the default's only
    assert TargetRules().allows(parse_target("ntp://localhost"))
    assert TargetRules().allows(parse_target("ntp://[::1]:123"))


def test_a_probe_keeps_within_the_scrape_timeout():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    with silent, exporter("--timeout", "30") as (_, port):
        target = f"ntp://127.0.0.1:{silent.getsockname()[1]}"
        header = {"X-Prometheus-Scrape-Timeout-Seconds": "1.2"}
        status, text = get(port, "/probe?target=" + target, **header)
    found = values(text)
    assert status == 200 and found["probe_success"] == 0
    assert found["probe_duration_seconds"] < 1.2


def test_command_line_mistakes_are_one_line():
    for options, said in [
        (["--serve", "0", "ntp://127.0.0.1"], "--serve takes its targets"),
        (["--allow-target", "10.0.0.0/8", "ntp://127.0.0.1"], "goes with --serve"),
        (["--serve", "0", "--allow-target", "a..b"], "not a subnet or a host name"),
        ([], "a TARGET is needed"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "timeservice.skew", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 3, result
        assert said in result.stderr and len(result.stderr.splitlines()) == 1


def test_its_settings_live_in_a_file_that_sighup_reads_again(serving, tmp_path):
    ntp = serving(
        NtpServer(("127.0.0.1", 0), NtpHandler, local_stratum=10, upstream=None)
    )
    target = f"ntp://127.0.0.1:{port_of(ntp)}"
    path = tmp_path / "exporter.toml"
    path.write_text('allow_target = ["127.0.0.0/8"]\nmax_probes = 4\n')
    with exporter("--config", str(path)) as (process, port):
        assert probe(port, target)["probe_success"] == 1
        path.write_text('allow_target = ["10.0.0.0/8"]\nmax_probes = 8\n')
        process.send_signal(signal.SIGHUP)
        until(process.stderr, re.compile("--max-probes cannot change while serving"))
        until(process.stderr, re.compile(f"SIGHUP received; reloaded {path}"))
        assert get(port, "/probe?target=" + target)[0] == 403  # in force now
        path.write_text("allow_target = [\n")  # not TOML
        process.send_signal(signal.SIGHUP)
        until(process.stderr, re.compile("reload failed; the configuration in force"))
        assert get(port, "/probe?target=" + target)[0] == 403  # still
    assert ntp.answered == 1
    path.write_text("allow_targets = []\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "timeservice.skew",
            "--serve",
            "0",
            "--config",
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 3
    assert f"{path}: allow_targets: no such setting" in result.stderr


# The Prometheus side: promtool, and a real Prometheus


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="needs promtool (Debian: prometheus; scripts/test installs it as root)",
)


@needs_promtool
def test_the_alert_rules_pass_promtool_and_their_own_tests():
    for command in (
        ["promtool", "check", "rules", "rules.yml"],
        ["promtool", "test", "rules", "rules_test.yml"],
        ["promtool", "check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            command, cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs prometheus (Debian: prometheus; scripts/test installs it as root)",
)
def test_a_real_prometheus_scrapes_it_and_reads_the_offsets_back(three, tmp_path):
    with exporter() as (process, port):
        web = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "timeservice_probe",
                            "metrics_path": "/probe",
                            "static_configs": [{"targets": three[:1] + three[2:]}],
                            "relabel_configs": [
                                {
                                    "source_labels": ["__address__"],
                                    "target_label": "__param_target",
                                },
                                {
                                    "source_labels": ["__param_target"],
                                    "target_label": "instance",
                                },
                                {
                                    "target_label": "__address__",
                                    "replacement": f"127.0.0.1:{port}",
                                },
                                {"target_label": "exporter", "replacement": "test"},
                            ],
                        }
                    ],
                }
            )
        )
        command = [
            "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ]  # fmt: skip
        prometheus = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            found, bounds = {}, {}
            for _ in range(40):  # each probe it scrapes, until both are in
                until(process.stderr, re.compile(r"probed ntp://"), lines=200)
                found = queried(web, "timeservice_probe_offset_seconds")
                bounds = queried(web, "timeservice_probe_error_seconds")
                if len(found) == len(bounds) == 2:
                    break
        finally:
            prometheus.terminate()
            prometheus.wait(TIMEOUT)
    assert len(found) == len(bounds) == 2, (found, bounds)
    # Each offset within the bound its probe gave (one sample, on a busy
    # machine as much as an idle one), and the bound a small one.
    assert abs(found[three[0]]) <= bounds[three[0]] < 0.05
    assert abs(found[three[2]] - 2.5) <= bounds[three[2]] < 0.05


def queried(web: int, metric: str) -> dict[str, float]:
    """Prometheus's latest value of `metric` by instance; {} until it has one."""
    query = urllib.parse.urlencode({"query": metric})
    status, text = get(web, f"/api/v1/query?{query}")
    if status != 200:  # not ready yet
        return {}
    return {
        series["metric"]["instance"]: float(series["value"][1])
        for series in json.loads(text)["data"]["result"]
    }
