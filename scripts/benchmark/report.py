"""The report: each figure's median over the rounds and how far the rounds lie
apart, the ratios between the servers, the machine the run was on, and the
table printed from them; the same figures are what --json writes.
"""

from __future__ import annotations

import os
import platform
import statistics

from .load import MEMORY, NTP_WORKLOAD

# A row is generator-bound when the generator was on a CPU for this share of
# the time it could have been: of its threads' (or processes') time, at most
# the cores the server left free.
GENERATOR_BOUND = 0.8
OURS = {"ours", "limited"}  # timeservice, its rate limit off and on
LOAD_NAMES = {
    "C": "scripts/peers/load.c, a thread per connection in a closed loop",
    "Python": "Python processes (no C compiler), epoll over many connections",
}


def spread(runs, key):
    """How far the rounds lie apart: (largest - smallest) / median."""
    values = [run[key] for run in runs]
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def summary(runs, generator):
    """The median of every figure over the rounds, the spread of the rate and
    of the CPU per reply, and whether the generator was the limit."""
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return figures | {
        "rps_spread": spread(runs, "rps"),
        "server_us_spread": spread(runs, "server_us"),
        "generator": generator,
        "generator_bound": figures["generator_busy"] >= GENERATOR_BOUND,
        "rounds": runs,
    }


def compare(results, reference):
    """Each server's CPU per reply ÷ the reference's, and timeservice's rate
    ÷ each peer's (not its own with the limit on, which the table weighs
    against the responder); None where either row was generator-bound."""
    base = results.get(reference)
    for figures in results.values():
        figures["server_us_to_reference"] = (
            quotient(figures["server_us"], base["server_us"]) if base else None
        )
    ours = results["ours"]
    return {
        peer: {
            "rps": (
                None
                if ours["generator_bound"] or figures["generator_bound"]
                else quotient(ours["rps"], figures["rps"])
            ),
            "server_us": quotient(ours["server_us"], figures["server_us"]),
        }
        for peer, figures in results.items()
        if peer not in OURS
    }


def quotient(a, b):
    """a ÷ b, or None where b is 0 (a CPU time under one clock tick)."""
    return a / b if b else None


def summarise(args, generator, samples, memory, ntp):
    results, ratios = {}, {}
    for name, runs_by_server in samples.items():
        results[name] = {
            server: summary(runs, generator) for server, runs in runs_by_server.items()
        }
        ratios[name] = compare(results[name], "c")
    memory_results = {
        server: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        | {"rounds": runs}
        for server, runs in memory.items()
        if runs
    }
    ntp_results = {server: summary(runs, generator) for server, runs in ntp.items()}
    return {
        "machine": machine(),
        "command": " ".join(["python", "scripts/bench.py"] + args.argv),
        "generator": generator,
        "generator_bound_at": GENERATOR_BOUND,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "workloads": results,
        "ratios": ratios,
        "memory": memory_results,
        "ntp": ntp_results,
        "ntp_ratios": compare(ntp_results, "chronyd") if ntp_results else {},
    }


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


HEADINGS = (
    (
        f"{'':<34} {'':<12} {'req/s':>8} {'':>4} {'p99':>6}  "
        f"{'server CPU per reply, µs':<27} {'gen':>4}"
    ),
    (
        f"{'workload':<34} {'server':<12} {'median':>8} {'±':>4} {'ms':>6}  "
        f"{'user':>5} {'sys':>5} {'total':>5} {'±':>4} {'÷ ref':>5} {'busy':>4}"
    ),
)


def row(name, server, r):
    """One workload and server: rate, tail, CPU per reply, the generator."""
    reference = r["server_us_to_reference"]
    marks = " ".join(
        mark
        for mark, shown in (
            ("generator-bound", r["generator_bound"]),
            ("Python load", r["generator"] == "Python"),
        )
        if shown
    )
    return (
        f"{name:<34} {server:<12} {r['rps']:>8,.0f} {r['rps_spread']:>4.0%}"
        f" {r['p99_ms']:>6.3f}  {r['server_user_us']:>5.1f}"
        f" {r['server_system_us']:>5.1f} {r['server_us']:>5.1f}"
        f" {r['server_us_spread']:>4.0%}"
        f" {'' if reference is None else f'{reference:.2f}':>5}"
        f" {r['generator_busy']:>4.0%} {marks}"
    ).rstrip()


def ratio(value):
    return "gen-bound" if value is None else f"{value:.2f}x"


def table(report, names):
    """The report as text: one row per workload and server, then the ratios;
    `names` says what to call each server."""
    m = report["machine"]
    out = [
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['kernel']}",
        f"load: {LOAD_NAMES[report['generator']]}",
        (
            f"median of {report['rounds']} interleaved rounds of {report['seconds']:g}"
            " s each; ± the spread between rounds, (largest - smallest) ÷ median"
        ),
        "",
        *HEADINGS,
    ]
    for name, by_server in report["workloads"].items():
        for i, (server, r) in enumerate(by_server.items()):
            out.append(row(name if i == 0 else "", names[server], r))
    peers = list(next(iter(report["ratios"].values()), []))
    heading = "".join(f" {names[peer]:>12}" for peer in peers)
    if peers:
        out += ["", f"{'timeservice req/s ÷ peer req/s':<34}{heading}"]
    for name, by_peer in report["ratios"].items():
        out.append(
            f"{name:<34}" + "".join(f" {ratio(by_peer[p]['rps']):>12}" for p in peers)
        )
    if "before" in peers:  # an A/B run: what the change costs, per reply
        out += ["", f"{'timeservice CPU per reply ÷ before':<34}"]
        for name, by_peer in report["ratios"].items():
            out.append(f"{name:<34} {by_peer['before']['server_us']:>12.2f}x")
    if report["memory"]:
        heading = f"{MEMORY}, RSS"
        out += ["", f"{heading:<34} {'server':<12} {'idle MiB':>8} {'+ MiB':>7}"]
        for server, r in report["memory"].items():
            out.append(
                f"{'':<34} {names[server]:<12}"
                f" {r['idle_mib']:>8.1f} {r['held_mib']:>7.1f}"
            )
    if report["ntp"]:
        out += ["", *HEADINGS]
        for i, (server, r) in enumerate(report["ntp"].items()):
            out.append(row(NTP_WORKLOAD[0] if i == 0 else "", names[server], r))
        for peer, figures in report["ntp_ratios"].items():
            out.append(
                f"{f'timeservice req/s ÷ {names[peer]} req/s':<47}"
                f" {ratio(figures['rps']):>8}"
            )
            if peer in ("before", "responder"):
                out.append(
                    f"{f'timeservice CPU per reply ÷ {names[peer]}':<47}"
                    f" {figures['server_us']:>7.2f}x"
                )
        limited, responder = (report["ntp"].get(n) for n in ("limited", "responder"))
        if limited and responder:  # the rate limit on against the responder's bucket
            on = quotient(limited["server_us"], responder["server_us"])
            text = "n/a" if on is None else f"{on:.2f}x"
            out.append(
                f"{'limit on: timeservice CPU per reply ÷ responder':<47} {text:>8}"
            )
    bad = sum(
        r["bad_replies"] for by in report["workloads"].values() for r in by.values()
    ) + sum(r["bad_replies"] for r in report["ntp"].values())
    if bad:
        out += ["", f"WARNING: {bad} replies were not a timestamp line"]
    out += [
        "",
        "server CPU per reply: user and system time of the server's processes and",
        "threads over the measured seconds, ÷ the replies; ÷ ref: ÷ the C server's",
        "(chronyd's for NTP). gen busy: the generator's CPU time, ÷ what it could",
        "have had (its threads, at most the cores the server left free);",
        f"generator-bound from {GENERATOR_BOUND:.0%}: the generator, not the server,",
        "set that rate, and no rate ratio is made of it.",
    ]
    return "\n".join(out)
