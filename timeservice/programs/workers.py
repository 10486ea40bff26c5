"""The server program's workers: the bound sockets served from several
processes (--workers N), watched by the parent, which alone tells systemd,
reloads them all on SIGHUP and serves their metrics, summed."""

from __future__ import annotations

import argparse
import signal
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..operations import prefork, systemd
from ..operations.cpu import kept_on_cpu, worker_cpus
from ..operations.gathering import Gathered, report
from ..operations.service import Service, serve, stop_on_signals
from . import starting

REPORT_INTERVAL = 1.0  # seconds between a worker's counts, while metrics are served


@dataclass
class Workers:
    """What the workers serve, and what the parent keeps: the metrics server
    (None: no --metrics), the counts it reads (Gathered), and how a process
    reloads (a Reloader for its servers)."""

    servers: list[socketserver.BaseServer]
    metrics: Any
    gathered: Gathered | None
    reloader: Callable[..., Any]


def serve_in_workers(
    workers: Workers,
    args: argparse.Namespace,
    stopping: Callable[[], None],
    ready: Callable[[str], None],
    notifier: systemd.Notifier,
) -> int:
    """Serve the bound sockets from `args.workers` processes, each on a CPU
    of its own where --cpu allows; the limits hold in each worker. A worker
    whose server stops ends with status 1, one whose loops stop turning goes
    silent, and the supervisor starts another; only the supervisor tells
    systemd's watchdog, while every worker beats (NotifyAccess=main), with
    its counts when the parent serves the metrics."""
    servers = workers.servers
    for server in servers:
        # Every worker waits on every socket; those that lose the race for
        # a connection or a datagram go back to waiting instead of blocking.
        server.socket.setblocking(False)  # type: ignore[attr-defined]
    cpus = worker_cpus(args.cpu, args.workers)
    supervisor = prefork.Supervisor(args.workers, lambda n, beat: 0)
    supervisor.gathered = workers.gathered
    if notifier.watchdog is not None:  # silent past half of it: replaced
        supervisor.silence = notifier.watchdog / 2
        supervisor.watchdog = notifier.watched

    def work(number: int, beat: Callable[..., None]) -> int:
        if workers.metrics is not None:
            workers.metrics.socket.close()  # the parent's to serve
        service = Service(servers)
        service.on_reload = workers.reloader(servers, quiet=True).reload
        interval = supervisor.silence / 4
        if workers.gathered is not None:
            interval = min(interval, REPORT_INTERVAL)
            told = beat  # the counts, with every beat

            def beat() -> None:
                told(report(servers))

        with stop_on_signals(service.stop, service.reload), kept_on_cpu(cpus[number]):
            return serve(service, beat, interval)

    parent = workers.reloader([] if workers.metrics is None else [workers.metrics])

    def reload_all() -> None:
        if parent.reload():  # checks the file, says what changed, tells systemd
            supervisor.signal_workers(signal.SIGHUP)

    supervisor.work = work
    supervisor.on_stop = stopping
    supervisor.on_reload = reload_all
    serving = None
    if workers.metrics is not None:
        serving = threading.Thread(
            target=workers.metrics.serve_forever, name="timeservice metrics"
        )

    def started() -> None:
        if serving is not None:  # once the workers are forked: a thread of its own
            serving.start()
        ready(f"Serving from {args.workers} worker processes.")

    try:
        status = supervisor.serve(started)
        return starting.status_after(status, supervisor.stopped_by)
    finally:
        if serving is not None and serving.is_alive():
            workers.metrics.shutdown()
            serving.join()
        for server in servers:
            server.server_close()
