"""The benchmark script runs and reports every figure; no figure is judged here."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest
from conftest import NTS_EXTRA, ROOT

from timeservice.host import capabilities

PACKAGE = ROOT / "scripts" / "benchmark"  # the parts scripts/bench.py runs
MAX_LINES = 400

# The C epoll peer and the C load generator are built with the system's C
# compiler, when there is one; without it the load comes from Python.
COMPILER = shutil.which("cc") or shutil.which("gcc")
SERVERS = {"ours", "seed", "asyncio", "selectors"} | ({"c"} if COMPILER else set())
SERVERS |= {"workers"} if hasattr(os, "fork") else set()  # --workers 2
WORKLOADS = {
    "1 connection, persistent",
    "8 connections, persistent",
    "64 connections, persistent",
    "1 client, connection per request",
    "8 clients, connection per request",
}
HEADING = "server CPU per reply, µs"


def quick_benchmark(tmp_path, *options: str) -> tuple[str, dict]:
    report_file = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--json", str(report_file)]
        + list(options),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "round 1 of 1: seed sketch, 64 connections, persistent" in result.stderr
    assert "WARNING: " not in result.stdout  # every reply was a timestamp line
    return result.stdout, json.loads(report_file.read_text())


def check_figures(figures: dict, generator: str) -> None:
    """One row's figures: the rate, the tail, CPU per reply, the generator."""
    assert figures["rps"] > 0
    assert figures["bad_replies"] == 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["server_us"] >= 0
    assert figures["server_us"] == pytest.approx(
        figures["server_user_us"] + figures["server_system_us"]
    )
    assert figures["generator_us"] >= 0
    assert figures["generator_bound"] == (figures["generator_busy"] >= 0.8)
    assert figures["rps_spread"] == figures["server_us_spread"] == 0  # one round
    assert figures["generator"] == generator
    assert len(figures["rounds"]) == 1


def rows_of(table: str, server: str) -> list[str]:
    """The rate tables' rows of one server (those with a spread, in %)."""
    return [
        line for line in table.splitlines() if f" {server} " in line and "%" in line
    ]


@pytest.mark.slow
@pytest.mark.skipif(COMPILER is None, reason="no C compiler for the C peers")
def test_the_quick_benchmark_reports_every_server_and_workload(tmp_path):
    table, report = quick_benchmark(tmp_path)
    assert "load: scripts/peers/load.c" in table
    assert table.count(HEADING) == 2  # NTP: ours and the minimal responder at least
    for name in ("timeservice", "seed sketch", "asyncio", "C epoll", *WORKLOADS):
        assert name in table
    assert "Python load" not in table
    assert len(rows_of(table, "C epoll")) == len(WORKLOADS)

    assert report["generator"] == "C"
    assert report["command"] == "python scripts/bench.py --quick --json " + str(
        tmp_path / "bench.json"
    )
    assert set(report["workloads"]) == WORKLOADS
    for by_server in report["workloads"].values():
        assert set(by_server) == SERVERS
        for figures in by_server.values():
            check_figures(figures, "C")
        c = by_server["c"]
        assert c["server_us_to_reference"] in (1.0, None)  # None: under a tick
    for name, by_peer in report["ratios"].items():
        assert set(by_peer) == SERVERS - {"ours"}
        ours = report["workloads"][name]["ours"]
        for peer, ratio in by_peer.items():
            peer_figures = report["workloads"][name][peer]
            bound = ours["generator_bound"] or peer_figures["generator_bound"]
            assert (ratio["rps"] is None) == bound  # no ratio of a generator's rate
            if not bound:
                assert ratio["rps"] == pytest.approx(ours["rps"] / peer_figures["rps"])
    # NTP over UDP: ours, with its rate limit off and on, against the
    # minimal responder and chronyd
    chronyd = {"chronyd"} if shutil.which("chronyd") else set()
    assert set(report["ntp"]) == {"ours", "limited", "responder"} | chronyd
    for figures in report["ntp"].values():
        check_figures(figures, "C")
    assert set(report["ntp_ratios"]) == {"responder"} | chronyd
    for peer in {"responder"} | chronyd:
        assert set(report["ntp_ratios"][peer]) == {"rps", "server_us"}
    assert "timeservice CPU per reply ÷ responder" in table
    ntp = report["ntp"]
    limited = ntp["limited"]["server_us"] / ntp["responder"]["server_us"]
    said = re.search(r"limit on: timeservice CPU per reply ÷ responder +(\S+)x", table)
    assert said is not None and float(said[1]) == round(limited, 2)
    assert set(report["memory"]) == SERVERS - {"workers"}
    for figures in report["memory"].values():
        assert figures["idle_mib"] > 0


@pytest.mark.slow
def test_without_the_c_generator_the_rows_say_the_load_came_from_python(tmp_path):
    table, report = quick_benchmark(tmp_path, "--python-load")
    assert "load: Python processes" in table
    assert report["generator"] == "Python"
    rows = rows_of(table, "timeservice")
    assert len(rows) == len(WORKLOADS) + 1  # and NTP
    assert all(row.endswith("Python load") for row in rows)
    for by_server in report["workloads"].values():
        assert set(by_server) == SERVERS
        for figures in by_server.values():
            check_figures(figures, "Python")


@pytest.mark.slow
def test_an_ab_run_measures_another_checkout_interleaved(tmp_path):
    report_file = tmp_path / "ab.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--json", str(report_file)]
        + ["--against", str(ROOT), "--only", "seed", "--parts", "tcp,ntp"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    for by_server in report["workloads"].values():
        assert set(by_server) == {"ours", "seed", "before"}
    assert report["memory"] == {}  # not asked for
    assert "timeservice CPU per reply ÷ before" in result.stdout
    if shutil.which("chronyd"):
        assert set(report["ntp"]) == {
            "ours",
            "limited",
            "responder",
            "before",
            "chronyd",
        }


def quick_part(tmp_path, part: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``bench.py --quick --parts PART``: what it printed, and its report."""
    report_file = tmp_path / f"{part}.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--parts", part]
        + ["--json", str(report_file)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result, json.loads(report_file.read_text())


@pytest.mark.slow
def test_the_forged_part_shows_the_address_never_got_more_than_it_sent(tmp_path):
    result, report = quick_part(tmp_path, "forged")
    servers = ["ours"] + (["chronyd"] if shutil.which("chronyd") else [])
    if "chronyd" not in servers:
        assert "chronyd is not installed" in result.stderr
    assert HEADING not in result.stdout  # the forged part alone
    rows = [
        line.split()
        for line in result.stdout.splitlines()
        if line.split()[:1] in (["timeservice"], ["chronyd"])
    ]
    assert len(rows) == 2 * len(servers)  # --quick: two forged rates
    for row in rows:  # server, forged rate, answered/asked, got/sent, got ÷ sent
        assert len(row) == 5
        answered, asked = map(float, row[2].split("/"))
        got, sent = map(int, row[3].split("/"))
        assert 0 <= answered <= asked == 4  # twice a second for 2 s
        assert 0 <= got <= sent
        assert float(row[4]) <= 1
    assert report["workloads"] == report["ntp"] == {}
    forged = report["forged"]
    assert [(r["server"], r["rate"]) for r in forged["rows"]] == [
        (server, rate) for rate in (20, 200) for server in servers
    ]
    for figures in forged["rows"]:
        for run in figures["rounds"]:
            assert run["address_received"] <= run["address_sent"]
            assert run["client_answered"] + run["client_kisses"] <= 4


@pytest.mark.slow
def test_the_send_part_shows_a_reply_never_leaves_before_its_time(tmp_path):
    result, report = quick_part(tmp_path, "send")
    send = report["send"]
    if not capabilities.RECEIVE_TIMESTAMPS:
        assert send == {}
        assert "the kernel gives no receive times here" in result.stdout
        return
    assert set(send) == {"idle", "busy"}
    for row in send.values():
        assert row["replies"] > 0
        # The timestamp is written, then the datagram leaves: never before.
        assert 0 <= row["p10"] <= row["p50"] <= row["p90"] < 1000
    assert "idle" in result.stdout and "busy" in result.stdout


@pytest.mark.slow
def test_the_nts_part_measures_key_establishment_and_authenticated_requests(
    tmp_path,
):
    result, report = quick_part(tmp_path, "nts")
    if not (shutil.which("chronyd") and NTS_EXTRA and shutil.which("cc")):
        assert report["nts"] == {}
        assert "no NTS rows: they need" in result.stderr
        return
    nts = report["nts"]
    assert list(nts) == [
        "NTS-KE, 2 clients, an exchange each",
        "NTS over UDP, 8 clients",
    ]
    for figures in nts.values():
        assert set(figures["servers"]) == {"ours", "chronyd"}
        for server in figures["servers"].values():
            # Every request made ahead answered authenticated: none refused.
            assert server["rps"] > 0 and server["bad_replies"] == 0
            assert server["server_us"] > 0
        assert figures["ratios"]["chronyd"]["server_us"] > 0
    assert "timeservice CPU per reply ÷ chronyd" in result.stdout
    assert report["workloads"] == report["ntp"] == {}


def test_every_module_of_the_benchmark_is_one_short_concern():
    modules = sorted(PACKAGE.glob("*.py"))
    assert {module.stem for module in modules} >= {"cli", "servers", "load"}
    for module in modules:
        text = module.read_text()
        assert len(text.splitlines()) <= MAX_LINES, module.name
        docstring = ast.get_docstring(ast.parse(text))
        assert docstring and "\n\n" not in docstring, module.name  # one paragraph


def test_the_script_runs_from_any_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Benchmark timeservice against the assignment's sketch" in result.stdout
    for option in ("--rounds", "--quick", "--json", "--against", "--only", "--parts"):
        assert option in result.stdout
    assert "forged" in result.stdout  # a part, not in the default set


def module_constants(modules) -> dict:
    """A copy of every dict, list, set and tuple the modules hold at their top."""
    return {
        (module.__name__, name): copy.deepcopy(value)
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, dict | list | set | tuple) and not name.startswith("__")
    }


def run_in_process(main, report_file, *options: str) -> dict:
    """The report of one quick run of the benchmark's main(), in this process."""
    quick = ["--quick", "--parts", "memory"]  # the shortest run that has rows
    assert main([*quick, "--json", str(report_file), *options]) == 0
    return json.loads(report_file.read_text())


@pytest.mark.slow
def test_two_runs_in_one_process_each_measure_only_their_own_servers(
    tmp_path, monkeypatch, capsys
):
    import resource  # POSIX, as the benchmark is

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)  # the run raises it
    if limit[1] != resource.RLIM_INFINITY and limit[1] < 1200:
        pytest.skip("the open-file limit is too low for 1000 idle connections")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    cli = importlib.import_module("benchmark.cli")
    modules = [
        importlib.import_module(f"benchmark.{info.name}")
        for info in pkgutil.iter_modules([str(PACKAGE)])
    ]
    constants = module_constants(modules)
    try:
        first = run_in_process(
            cli.main, tmp_path / "1.json", "--only", "seed", "--against", str(ROOT)
        )
        first_table = capsys.readouterr().out
        second = run_in_process(cli.main, tmp_path / "2.json", "--only", "asyncio")
        second_table = capsys.readouterr().out
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    assert set(first["memory"]) == {"ours", "seed", "before"}
    assert " seed sketch " in first_table and " before " in first_table
    assert set(second["memory"]) == {"ours", "asyncio"}
    assert " asyncio " in second_table
    assert " seed sketch " not in second_table and " before " not in second_table
    assert module_constants(modules) == constants  # neither run changed them
