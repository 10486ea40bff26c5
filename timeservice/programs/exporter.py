"""The skew check as a Prometheus multi-target exporter, as
blackbox_exporter is one: ``/probe?target=T`` probes one target when it is
scraped, ``/skew?target=A&target=B`` judges a group (RFC 5905's
intersection, the falsetickers, the skew they prove), ``/metrics`` gives the
exporter's own counts. It serves within the metrics endpoint's bounds, and
probes only the targets it is allowed to (loopback by default): an exporter
that probes whatever it is told is an open proxy into its network.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ..clients.probing import Probe, Prober
from ..clients.selection import (
    Failure,
    GroupVerdict,
    Reading,
    Target,
    judge,
)
from ..clients.targets import Asking, parse_target
from ..operations.endpoint import EndpointHandler, EndpointServer
from ..operations.metrics import CONTENT_TYPE, Family, Sample, render
from ..policy.access import parse_subnet

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("127.0.0.0/8", "::1", "localhost")  # what may be probed
SCRAPE_TIMEOUT = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_MARGIN = 0.5  # seconds kept for the reply, as blackbox_exporter keeps
MOST_TARGETS = 256  # in one /skew


class TargetRules:
    """The targets an exporter may probe: addresses in `allowed`'s subnets,
    and the host names it lists (``.example.com`` for every name under
    it). A name is probed only if listed: resolving it first to check its
    addresses would check another answer than the probe's."""

    def __init__(self, allowed: Sequence[str] = DEFAULT_TARGETS) -> None:
        self.subnets, self.names, self.domains = [], set(), []
        for text in allowed:
            try:
                self.subnets.append(parse_subnet(text))
            except ValueError:
                name = text.lower().rstrip(".")
                if name.startswith("."):
                    self.domains.append(name)
                else:
                    self.names.add(name)

    @staticmethod
    def check(text: str) -> str:
        """An argparse type: a subnet, a host name or ``.domain``."""
        name = text.strip(".")
        if not name or any(not part for part in name.split(".")):
            raise argparse.ArgumentTypeError(f"not a subnet or a host name: {text!r}")
        return text

    def allows(self, target: Target) -> bool:
        """Whether `target`'s host may be probed."""
        host = target.host.split("%")[0]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.lower().rstrip(".")
            return name in self.names or any(name.endswith(d) for d in self.domains)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in subnet for subnet in self.subnets)


def probe_families(probe: Probe) -> list[Family]:
    """A probe's metrics: blackbox_exporter's two, then what it measured."""
    result = probe.result
    families: list[Family] = [
        gauge("probe_success", "1 if the target gave a reading.", int(probe.success)),
        gauge("probe_duration_seconds", "How long the probe took.", probe.seconds),
    ]
    if isinstance(result, Failure):
        families.append(
            gauge(
                "timeservice_probe_failed",
                "1, labelled by why the target gave no reading.",
                1,
                verdict=result.verdict,
            )
        )
        return families
    families += [
        gauge(
            "timeservice_probe_offset_seconds",
            "How far the target's clock is ahead of the exporter's.",
            result.offset,
        ),
        gauge(
            "timeservice_probe_error_seconds",
            "The most the offset can be wrong by.",
            result.bound,
        ),
    ]
    if probe.stratum is not None:
        families += [
            gauge(
                "timeservice_probe_delay_seconds",
                "The NTP exchange's round trip on the network.",
                result.delay,
            ),
            gauge(
                "timeservice_probe_stratum", "The NTP server's stratum.", probe.stratum
            ),
            gauge(
                "timeservice_probe_root_distance_seconds",
                "How far the NTP server says it may be from true time.",
                probe.root_distance or 0.0,
            ),
        ]
    return families


def skew_families(verdict: GroupVerdict) -> list[Family]:
    """A group's verdict: its status, the skew, each target's standing."""
    low, high = verdict.majority or (0.0, 0.0)
    families = [
        gauge(
            "timeservice_skew_status",
            "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, as the command line's.",
            verdict.status,
        ),
        gauge(
            "timeservice_skew_majority",
            "1 if a majority of the targets agree (RFC 5905's intersection).",
            int(verdict.majority is not None),
        ),
        gauge(
            "timeservice_skew_seconds",
            "The largest skew between two targets beyond their bounds.",
            verdict.skew,
        ),
        gauge(
            "timeservice_skew_majority_offset_seconds",
            "The middle of the majority's interval, from the exporter's clock.",
            (low + high) / 2,
        ),
        gauge(
            "timeservice_skew_exporter_distance_seconds",
            "How far the exporter's clock is at least from the majority.",
            verdict.distance,
        ),
    ]
    agrees: list[Sample] = []
    false: list[Sample] = []
    offsets: list[Sample] = []
    up: list[Sample] = []
    for item in verdict.results:
        labels = {"target": item.target.text}
        up.append((labels, int(isinstance(item, Reading))))
        if isinstance(item, Reading):
            offsets.append((labels, item.offset))
            agrees.append((labels, int(item in verdict.agree)))
            false.append((labels, int(item in verdict.false)))
    families += [
        ("timeservice_skew_target_up", "gauge", "1 if the target gave a reading.", up),
        (
            "timeservice_skew_target_offset_seconds",
            "gauge",
            "How far the target's clock is ahead of the exporter's.",
            offsets,
        ),
        (
            "timeservice_skew_target_agrees",
            "gauge",
            "1 if the target is inside the majority's interval.",
            agrees,
        ),
        (
            "timeservice_skew_target_falseticker",
            "gauge",
            "1 if the target's interval misses the majority's: its clock is wrong.",
            false,
        ),
    ]
    return families


def said(probe: Probe) -> str:
    """A probe's result, for the log."""
    result = probe.result
    if isinstance(result, Failure):
        return f"{result.verdict} ({result.reason})"
    return f"{result.offset:+.6f} s ± {result.bound:.6f} s"


def gauge(name: str, help_text: str, value: float, **labels: str) -> Family:
    """A family of one gauge sample."""
    return (name, "gauge", help_text, [(labels, value)])


class ExporterHandler(EndpointHandler):
    """GET /probe, /skew and /metrics; anything else is 404."""

    protocol = "exporter"
    server: ExporterServer

    def do_GET(self) -> None:
        """Serve one of the three paths."""
        path, _, query = self.path.partition("?")
        server = self.server
        targets = urllib.parse.parse_qs(query, keep_blank_values=True).get("target", [])
        if path == "/metrics":
            self.reply(200, render(server.own_families()))
            return
        if path not in ("/probe", "/skew"):
            self.send_error(
                404, "here: /probe?target=T, /skew?target=A&target=B, /metrics"
            )
            return
        server.count(path)
        if not targets or (path == "/probe" and len(targets) > 1):
            self.send_error(
                400, f"{path} needs {'one' if path == '/probe' else 'a'} target"
            )
            return
        if len(targets) > MOST_TARGETS:
            self.send_error(400, f"at most {MOST_TARGETS} targets")
            return
        parsed = []
        for text in targets:
            try:
                target = parse_target(text)
            except ValueError as exc:
                self.send_error(400, f"bad target {text!r}: {exc}")
                return
            if not server.rules.allows(target):
                server.count("refused_target")
                self.send_error(403, f"target not allowed here: {text}")
                return
            parsed.append(target)
        seconds = self.scrape_seconds()
        if path == "/probe":
            found = server.prober.probe(parsed[0], seconds)
            logger.debug("probed %s: %s", parsed[0].text, said(found))
            self.reply(200, render(probe_families(found)))
            return
        probes = server.prober.probe_all(parsed, seconds)
        verdict = judge(
            [probe.result for probe in probes],
            server.warning,
            server.critical,
            server.tolerance,
            server.ignore_unreachable,
        )
        self.reply(200, render(skew_families(verdict)))

    def scrape_seconds(self) -> float:
        """The time this scrape allows, less a margin for the reply: as the
        scraper says, else the probe's own timeout."""
        ceiling = self.server.prober.asking.timeout * 2
        try:
            given = float(self.headers.get(SCRAPE_TIMEOUT, ""))
        except ValueError:
            return ceiling
        if not given > 0:  # NaN too
            return ceiling
        return min(ceiling, max(0.05, given - SCRAPE_MARGIN))

    def reply(self, status: int, text: str) -> None:
        """Send `text` in Prometheus's text format."""
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ExporterServer(EndpointServer):
    """The exporter: probes as `prober` does, the targets `rules` allow,
    and judges groups with the thresholds given; EndpointServer's limits."""

    def __init__(
        self,
        server_address: tuple,
        prober: Prober,
        rules: TargetRules,
        bind_and_activate: bool = True,
        *,
        warning: float = 0.1,
        critical: float = 1.0,
        tolerance: float = 0.01,
        ignore_unreachable: bool = False,
        **settings: Any,
    ) -> None:
        self.prober, self.rules = prober, rules
        self.warning, self.critical = warning, critical
        self.tolerance, self.ignore_unreachable = tolerance, ignore_unreachable
        self.requests: dict[str, int] = {}
        super().__init__(server_address, ExporterHandler, bind_and_activate, **settings)

    def apply(
        self,
        rules: TargetRules,
        asking: Asking,
        access: Any = None,
        **thresholds: Any,
    ) -> None:
        """New settings, from a reload: for the scrapes that come next (one
        under way keeps what it read)."""
        self.rules = rules
        self.prober.asking = dataclasses.replace(asking, samples=1)
        for name, value in thresholds.items():
            setattr(self, name, value)
        self.reconfigure(access=access)

    def count(self, what: str) -> None:
        """Count a request for `what` (a path, or a target refused)."""
        with self._open_lock:
            self.requests[what] = self.requests.get(what, 0) + 1

    def own_families(self) -> list[Family]:
        """The exporter's own counts."""
        with self._open_lock:
            requests = dict(self.requests)
        probes: list[Sample] = [
            ({"protocol": protocol, "success": str(success).lower()}, count)
            for (protocol, success), count in sorted(self.prober.probes.items())
        ]
        refused = [
            ({"cause": cause}, count)
            for cause, count in sorted(self.statistics()["refused"].items())
        ]
        return [
            (
                "timeservice_exporter_probes_total",
                "counter",
                "Targets probed, by protocol and whether they gave a reading.",
                probes,
            ),
            (
                "timeservice_exporter_requests_total",
                "counter",
                "Requests for /probe and /skew, and targets refused as not allowed.",
                [({"path": what}, count) for what, count in sorted(requests.items())],
            ),
            gauge(
                "timeservice_exporter_probes_running",
                "Probes asking now.",
                self.prober.running,
            ),
            (
                "timeservice_exporter_refused_total",
                "counter",
                "Scrapers refused: busy, per_host, per_network, denied.",
                refused,
            ),
        ]
