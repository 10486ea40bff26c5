"""The workers' counts, gathered where the metrics are served: the parent.

Each worker sends, with every beat on its pipe (once a second while
metrics are served), one line of JSON: each of its servers' statistics()
and its thread count. The parent keeps the last line of each worker slot,
and when a worker ends, adds what it had counted to the slot's retired
counts, which outlive it, as prometheus_client's multiprocess mode keeps
its files: a counter summed over the slots never goes backwards, though
what a worker counted after its last beat is lost with it. A scrape reads
what the parent holds and costs the workers nothing.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Sequence
from typing import Any

COUNTERS = ("requests", "leaked", "exchanges")  # plain counts, summed
COUNTED_BY = ("errors", "refused", "nts")  # counts by reason, summed by reason
GAUGES = ("open_connections", "sources")  # now: the live workers' alone


def report(servers: Sequence[socketserver.BaseServer]) -> bytes:
    """What a worker sends with a beat: one line of JSON."""
    return (
        json.dumps(
            {
                "servers": [server.statistics() for server in servers],  # type: ignore[attr-defined]
                "threads": threading.active_count(),
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )


def add(total: dict[str, Any], counts: dict[str, Any], gauges: bool) -> None:
    """Add one server's `counts` to `total`, gauges only if `gauges`."""
    for key in COUNTERS:
        if key in counts:
            total[key] = total.get(key, 0) + counts[key]
    for key in COUNTED_BY:
        into = total.setdefault(key, {})
        for reason, count in counts.get(key, {}).items():
            into[reason] = into.get(reason, 0) + count
    if gauges:
        for key in GAUGES:
            if key in counts:
                total[key] = total.get(key, 0) + counts[key]


class Gathered:
    """The counts of every worker slot: the last report of the one running
    there now, and what those before it had counted. Thread-safe: the
    supervisor's loop writes, the metrics server's threads read."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self._lock = threading.Lock()
        self._last: dict[int, dict[str, Any]] = {}  # by slot
        self._retired: list[dict[str, Any]] = [{} for _ in range(servers)]
        self._partial: dict[int, bytes] = {}

    def heard(self, slot: int, data: bytes) -> int | None:
        """Bytes from a worker's pipe: keep its last whole report; the
        requests it counts in all, if they changed."""
        lines = (self._partial.pop(slot, b"") + data).split(b"\n")
        self._partial[slot] = lines.pop()[-65536:]  # not a whole line yet
        for line in reversed(lines):
            if line.strip():
                try:
                    report = json.loads(line)
                    requests = sum(s["requests"] for s in report["servers"])
                except (ValueError, KeyError, TypeError):
                    continue
                with self._lock:
                    before = self._last.get(slot)
                    self._last[slot] = report
                if before is None or before != report:
                    return requests
                return None
        return None

    def ended(self, slot: int) -> None:
        """A worker ended: what it had counted stays, as the slot's."""
        with self._lock:
            last = self._last.pop(slot, None)
            self._partial.pop(slot, None)
            if last is None:
                return
            for index, counts in enumerate(last.get("servers", [])[: self.servers]):
                add(self._retired[index], counts, gauges=False)

    def statistics(self, index: int) -> dict[str, Any]:
        """The statistics() of server `index`, summed over the workers."""
        with self._lock:
            total: dict[str, Any] = {"requests": 0, "refused": {}}
            add(total, self._retired[index], gauges=False)
            for report in self._last.values():
                servers = report.get("servers", [])
                if index < len(servers):
                    add(total, servers[index], gauges=True)
            return total

    def threads(self) -> dict[int, int]:
        """Each live worker slot's thread count."""
        with self._lock:
            return {
                slot: report.get("threads", 0) for slot, report in self._last.items()
            }


class GatheredServer:
    """A server as the metrics see it: its labels, and the statistics() the
    workers gathered for it."""

    def __init__(self, server: socketserver.BaseServer, index: int, gathered: Gathered):
        self.RequestHandlerClass = server.RequestHandlerClass
        self.socket_type = getattr(server, "socket_type", None)
        self.index, self.gathered = index, gathered

    def statistics(self) -> dict[str, Any]:
        """The workers' counts for this server, summed."""
        return self.gathered.statistics(self.index)
