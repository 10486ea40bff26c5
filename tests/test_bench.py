"""The benchmark script runs and reports every figure; no figure is judged here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

# The C epoll peer is built with the system's C compiler, when there is one.
SERVERS = {"ours", "seed", "asyncio"} | ({"c"} if shutil.which("cc") else set())
SERVERS |= {"workers"} if hasattr(os, "fork") else set()  # --workers 2
WORKLOADS = {
    "1 connection, persistent",
    "8 connections, persistent",
    "64 connections, persistent",
    "1 client, connection per request",
    "8 clients, connection per request",
}


@pytest.mark.slow
def test_the_quick_benchmark_reports_every_server_and_workload(tmp_path):
    report_file = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--json", str(report_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "round 1 of 1: seed sketch, 64 connections, persistent" in result.stderr
    for name in ("timeservice", "seed sketch", "asyncio", *WORKLOADS):
        assert name in result.stdout
    if "c" in SERVERS:
        assert "C epoll" in result.stdout
    for name in WORKLOADS:
        assert name in result.stdout
    assert "WARNING" not in result.stdout

    report = json.loads(report_file.read_text())
    assert set(report["workloads"]) == WORKLOADS
    for by_server in report["workloads"].values():
        assert set(by_server) == SERVERS
        for figures in by_server.values():
            assert figures["rps"] > 0
            assert figures["bad_replies"] == 0
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
            assert figures["load_gen_max_rps"] > 0
    assert set(report["ratios"]["64 connections, persistent"]) == SERVERS - {"ours"}
    if shutil.which("chronyd"):  # NTP over UDP: ours against chronyd
        assert set(report["ntp"]) == {"ours", "chronyd"}
        for figures in report["ntp"].values():
            assert figures["rps"] > 0
            assert figures["bad_replies"] == 0
        assert report["ntp_ratio"] > 0
    assert set(report["memory"]) == SERVERS - {"workers"}
    for figures in report["memory"].values():
        assert figures["idle_mib"] > 0
