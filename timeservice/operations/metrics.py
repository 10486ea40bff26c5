"""Prometheus metrics over HTTP: what the servers answered and refused, and
the clock's state as the NTP service sees it.

The text format (version 0.0.4) is written by hand: a few lines of it cost
less than a dependency. The counts come from each server's statistics(),
read when a scrape asks, so serving pays nothing for them.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..clock import claims, kernel
from ..wire import ntp
from .endpoint import EndpointHandler, EndpointServer

PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Sample = tuple[dict[str, str], float]
Family = tuple[str, str, str, list[Sample]]  # name, type, help, samples


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def render(families: Iterable[Family]) -> str:
    """The families in Prometheus's text format, samples with equal labels summed."""
    lines = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        summed: dict[tuple, float] = {}  # counts stay ints, exact
        for labels, value in samples:
            key = tuple(sorted(labels.items()))
            summed[key] = summed.get(key, 0) + value
        for key, value in summed.items():
            inside = ",".join(f'{label}="{_escape(text)}"' for label, text in key)
            number = repr(value) if isinstance(value, float) else str(value)
            lines.append(
                f"{name}{{{inside}}} {number}" if inside else f"{name} {number}"
            )
    return "\n".join(lines) + "\n"


def labels_of(server: socketserver.BaseServer) -> dict[str, str]:
    """The protocol a server speaks and its transport, as metric labels."""
    protocol = getattr(server.RequestHandlerClass, "protocol", "unknown")
    transport = "udp" if server.socket_type == socket.SOCK_DGRAM else "tcp"  # type: ignore[attr-defined]
    return {"protocol": protocol, "transport": transport}


ClockState = Callable[[], ntp.ServerState]  # what the NTP service claims, now


WorkerThreads = Callable[[], dict[int, int]]  # each live worker's threads


def collect(
    servers: Sequence[Any],
    clock_state: ClockState | None = None,
    worker_threads: WorkerThreads | None = None,
) -> list[Family]:
    """Every metric, read now from the servers (their statistics(): a
    worker's are gathered, see operations.gathering), the process, the
    workers and the kernel."""
    threads: list[Sample] = [({}, threading.active_count())]
    if worker_threads is not None:  # a sum of processes' threads means nothing
        threads = [({"worker": "parent"}, threading.active_count())]
        for slot, count in worker_threads().items():
            threads.append(({"worker": str(slot)}, count))
    requests: list[Sample] = []
    errors: list[Sample] = []
    refused: list[Sample] = []
    open_connections: list[Sample] = []
    sources: list[Sample] = []
    leaked: list[Sample] = []
    nts_requests: list[Sample] = []
    exchanges: list[Sample] = []
    for server in servers:
        labels = labels_of(server)
        counts = server.statistics()
        requests.append((labels, counts["requests"]))
        for reason, count in counts.get("errors", {}).items():
            errors.append(({**labels, "reason": reason}, count))
        for cause, count in counts["refused"].items():
            refused.append(({**labels, "cause": cause}, count))
        if "open_connections" in counts:  # a server that keeps connections open
            open_connections.append((labels, counts["open_connections"]))
        if "sources" in counts:  # a datagram server with its limits on
            sources.append((labels, counts["sources"]))
            leaked.append((labels, counts["leaked"]))
        for result, count in counts.get("nts", {}).items():  # NTP serving NTS
            nts_requests.append(({**labels, "result": result}, count))
        if "exchanges" in counts:  # NTS Key Establishment
            exchanges.append((labels, counts["exchanges"]))
    families: list[Family] = [
        (
            "timeservice_requests_total",
            "counter",
            "Requests answered, ERR replies included.",
            requests,
        ),
        (
            "timeservice_errors_total",
            "counter",
            "ERR lines sent and datagrams dropped as malformed, by reason.",
            errors,
        ),
        (
            "timeservice_refused_total",
            "counter",
            "Clients refused: busy, per_host, per_network, denied, rate_limited, "
            "low_source_port, loop, not_unicast.",
            refused,
        ),
        (
            "timeservice_open_connections",
            "gauge",
            "Connections open on the line protocol.",
            open_connections,
        ),
        (
            "timeservice_rate_limit_sources",
            "gauge",
            "Sources a UDP server's rate limit remembers (an IPv6 /64 is one).",
            sources,
        ),
        (
            "timeservice_leaked_total",
            "counter",
            "Datagrams answered over their source's limit, at random.",
            leaked,
        ),
        (
            "timeservice_nts_requests_total",
            "counter",
            "NTS requests answered authenticated, or with a NAK (a cookie it "
            "cannot open).",
            nts_requests,
        ),
        (
            "timeservice_nts_ke_exchanges_total",
            "counter",
            "NTS Key Establishments that ended with cookies sent.",
            exchanges,
        ),
        (
            "timeservice_threads",
            "gauge",
            "Threads in the process; with workers, in each (label worker).",
            threads,
        ),
    ]
    return families + clock_families(clock_state)


def clock_families(clock_state: ClockState | None) -> list[Family]:
    """The clock as the NTP service tells its clients about it (`clock_state`,
    its state(), where there is one), and as the kernel says."""
    kernel_state = kernel.read()
    if clock_state is not None:
        state = clock_state()
    else:
        state = claims.server_state(kernel_state, None, 0)
    families: list[Family] = [
        (
            "timeservice_clock_synchronised",
            "gauge",
            "1 if the NTP service answers as synchronised (leap indicator not 3).",
            [({}, int(state.leap != ntp.LEAP_UNSYNCHRONISED))],
        )
    ]
    if kernel_state is not None:
        families.append(
            (
                "timeservice_clock_maximum_error_seconds",
                "gauge",
                "The kernel's maximum error of the clock.",
                [({}, kernel_state.max_error)],
            )
        )
    return families


class MetricsHandler(EndpointHandler):
    """Answers GET /metrics; anything else is 404."""

    protocol = "metrics"  # for the log; no metric counts this server
    server: MetricsServer

    def do_GET(self) -> None:
        """Serve the metrics at /metrics, 404 elsewhere."""
        if self.path.partition("?")[0] != PATH:
            self.send_error(404, f"only {PATH} is here")
            return
        server = self.server
        families = collect(server.servers, server.clock_state, server.worker_threads)
        body = render(families).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer(EndpointServer):
    """Serves the metrics of `servers` over HTTP, within EndpointServer's
    limits; `clock_state` is what the NTP service claims of the clock (its
    state()), where there is one. With workers, `servers` are their counts
    gathered (GatheredServer) and `worker_threads` each one's threads."""

    def __init__(
        self,
        server_address: tuple,
        servers: Sequence[Any],
        bind_and_activate: bool = True,
        clock_state: ClockState | None = None,
        worker_threads: WorkerThreads | None = None,
        **settings: Any,
    ) -> None:
        self.servers = list(servers)
        self.clock_state = clock_state
        self.worker_threads = worker_threads
        super().__init__(server_address, MetricsHandler, bind_and_activate, **settings)
