"""The command line: the options, and the run they ask for. A run builds the C
peers, chooses the load generator and the lineup of servers once from the
options, then takes the rounds, every server afresh for every workload, in
turns, and hands the samples to the report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from . import forged, nts, sendpath
from .load import (
    IDLE_CONNECTIONS,
    MEMORY,
    NTP_WORKLOAD,
    WORKLOADS,
    CLoad,
    PythonLoad,
)
from .measure import check_replies, idle_memory, raise_file_limit, run_load
from .report import summarise, table
from .servers import NAMES, Lineup, build, choose_servers, start_ntp_server

PARTS = ("tcp", "memory", "ntp", "forged", "send", "nts")
DEFAULT_PARTS = ("tcp", "memory", "ntp")
DESCRIPTION = (
    "Benchmark timeservice against the assignment's sketch, an asyncio server and"
    " a minimal C server on epoll (built with the system's C compiler, if any)."
)


def choose_generator(workdir, python_load):
    """CLoad with the built generator, or PythonLoad where it cannot be built;
    and which it is, "C" or "Python"."""
    binary = None if python_load else build(workdir, "load", "-pthread")
    if binary is None:
        print(
            "the load comes from Python processes, which saturate before the "
            "fastest servers: the rows are marked",
            file=sys.stderr,
        )
        return PythonLoad, PythonLoad.label
    return (lambda *where: CLoad(binary, *where)), CLoad.label


def run(args) -> tuple[dict, Lineup]:
    """Every round of the run `args` asks for: the report, and the lineup of
    servers it measured."""
    workdir = tempfile.mkdtemp(prefix="bench-")
    c_server = build(workdir, "epoll_server")
    generator, label = choose_generator(workdir, args.python_load)
    memory_ok = raise_file_limit(IDLE_CONNECTIONS + 200)
    if not memory_ok:
        print(
            f"open-file limit too low for {MEMORY}; skipping that run", file=sys.stderr
        )
    lineup = choose_servers(
        c_server, args.only, args.against, bool({"ntp", "forged"} & args.parts)
    )
    servers = list(lineup.commands)
    ntp_servers = list(lineup.ntp) if "ntp" in args.parts else []
    forged_servers = forged.lineup(lineup.ntp) if "forged" in args.parts else []
    workloads = WORKLOADS if "tcp" in args.parts else []
    memory_ok = memory_ok and "memory" in args.parts
    samples = {name: {server: [] for server in servers} for name, _, _ in workloads}
    memory = {server: [] for server in servers}
    ntp = {server: [] for server in ntp_servers}
    forged_rounds = []
    for number in range(args.rounds):
        order = servers[number % len(servers) :] + servers[: number % len(servers)]
        for name, connections, mode in workloads:
            for server_name in order:
                progress(number, args.rounds, lineup.names[server_name], name)
                with lineup.start(server_name) as server:
                    check_replies(server)
                    samples[name][server_name].append(
                        run_load(
                            server,
                            connections,
                            mode,
                            args.seconds,
                            args.warmup,
                            generator,
                        )
                    )
        if memory_ok:
            for server_name in [s for s in order if s != "workers"]:  # one process
                progress(number, args.rounds, lineup.names[server_name], MEMORY)
                with lineup.start(server_name) as server:
                    memory[server_name].append(idle_memory(server, IDLE_CONNECTIONS))
        name, clients, mode = NTP_WORKLOAD
        turn = number % max(1, len(ntp_servers))
        for server_name in ntp_servers[turn:] + ntp_servers[:turn]:
            progress(number, args.rounds, lineup.names[server_name], name)
            tree = lineup.tree(server_name)
            with start_ntp_server(server_name, workdir, tree) as server:
                ntp[server_name].append(
                    run_load(
                        server, clients, mode, args.seconds, args.warmup, generator
                    )
                )
        if forged_servers:
            forged_rounds.append(
                forged.measure_round(
                    number,
                    forged_servers,
                    workdir,
                    args.quick,
                    lambda server, part, n=number: progress(
                        n, args.rounds, lineup.names[server], part
                    ),
                )
            )
    nts_rounds = []
    if "nts" in args.parts:
        nts_rounds = measure_nts(args, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(args, label, samples, memory, ntp)
    report["nts"] = nts.summarise(nts_rounds) if nts_rounds else {}
    report["forged"] = (
        forged.summarise(forged_rounds, args.quick) if forged_rounds else {}
    )
    if "send" in args.parts:  # this tree's library, in this process
        progress(0, 1, "this server", "send")
        report["send"] = sendpath.measure(args.quick)
    return report, lineup


def measure_nts(args, workdir) -> list[dict]:
    """The NTS part's rounds, after the others' (it needs the nts extra,
    chronyd and the C generator; where one is missing, it says so)."""
    binary = build(workdir, "load", "-pthread")
    missing = [] if binary else ["a C compiler"]
    missing += [] if shutil.which("chronyd") else ["chronyd"]
    try:
        files = nts.certificate(workdir)
    except ImportError:
        missing.append("the nts extra (pip install 'timeservice[nts]')")
    if missing:
        print(f"no NTS rows: they need {', '.join(missing)}", file=sys.stderr)
        return []
    return [
        nts.measure_round(
            number, workdir, files, binary, args.seconds, args.warmup,
            lambda server, part, n=number: progress(
                n, args.rounds, NAMES[server], part
            ),
        )
        for number in range(args.rounds)
    ]  # fmt: skip


def progress(number, rounds, server, workload):
    print(
        f"round {number + 1} of {rounds}: {server}, {workload}",
        file=sys.stderr,
        flush=True,
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="measured seconds per run (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="unmeasured seconds before each run (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round, to check that the script works (forged: "
        f"{forged.QUICK_SECONDS:g} s, {forged.QUICK_RATES[-1]} a second at most)",
    )
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="drive the load from Python processes, as where there is no C compiler",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="also measure the server of another checkout, as 'before', "
        "interleaved with this one: an A/B run",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        metavar="NAME,...",
        help="only these servers besides ours: workers, seed, asyncio, c, chronyd",
    )
    parser.add_argument(
        "--parts",
        type=lambda text: set(text.split(",")),
        default=set(DEFAULT_PARTS),
        metavar="PART,...",
        help="what to measure: tcp, memory, ntp, forged, send (default: "
        f"{','.join(DEFAULT_PARTS)}); forged: NTP requests forged from a "
        f"client's address at {', '.join(map(str, forged.FORGED_RATES))} a "
        f"second for {forged.FORGED_SECONDS:g} s each, against ours and chronyd "
        "with their rate limits on: what the client and the address get; "
        "send: how much later than its transmit timestamp a basic NTP reply "
        "leaves, idle and busy; nts: Key Establishments and NTS requests a "
        "second, ours against chronyd's, with CPU per exchange and request",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    if args.parts - set(PARTS):
        parser.error(f"--parts: unknown {','.join(sorted(args.parts - set(PARTS)))}")
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 0.2, 0.1
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    report, lineup = run(args)
    others = bool(args.parts & set(DEFAULT_PARTS))
    if others:
        print(table(report, lineup.names))
    if report["forged"]:  # after the others' table, or alone with the machine
        print(forged.table(report, lineup.names, machine=not others))
    if "send" in report:
        print(sendpath.table(report["send"]))
    if report["nts"]:
        print(nts.table(report["nts"], NAMES))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0
