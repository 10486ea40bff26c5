"""The NTS part: this server's NTS against chronyd's, each started afresh for
every workload with a certificate of the run's own CA and its rate limits
off. Key Establishments a second come from Python processes, each doing one
whole exchange (TLS 1.3 handshake, records, close) after another with this
project's client; NTS-authenticated NTP requests a second come from the C
generator, which sends requests made ahead of time from one Key
Establishment (each with its own Unique Identifier and transmit timestamp,
sealed with the client's key): the generator speaks no NTS itself. Each row
has the server's CPU per exchange or request, as the other rows do.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import multiprocessing
import os
import socket
import struct
import sys
import time
from pathlib import Path

from .load import CLoad
from .measure import run_load
from .report import HEADINGS, compare, row, summary
from .servers import OURS_NTP, ROOT, start_ntp_server

if str(ROOT) not in sys.path:  # scripts/bench.py puts scripts/ there, not ROOT
    sys.path.append(str(ROOT))
from timeservice.wire import ntp, nts  # noqa: E402

SERVERS = ("ours", "chronyd")
KE_WORKLOAD = ("NTS-KE, 2 clients, an exchange each", 2, "ke")
NTS_WORKLOAD = ("NTS over UDP, 8 clients", 8, "datagrams")
POOL = 4096  # requests made ahead of time, sent in turn
UNIQUE_BYTES = 32


def certificate(workdir: str) -> tuple[str, str, str]:
    """A CA of the run's own and a certificate it signs for 127.0.0.1:
    the CA's file, the certificate's (with the chain) and its key's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def signed(subject, key, issuer, signer, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + day)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = signed("bench CA", ca_key, ca_name, ca_key,
                [(x509.BasicConstraints(ca=True, path_length=None), True)])  # fmt: skip
    address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    leaf = signed("bench", key, ca_name, ca_key,
                  [(x509.SubjectAlternativeName([address]), False)])  # fmt: skip
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "cert.pem": leaf.public_bytes(pem) + ca.public_bytes(pem),
        "key.pem": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for name, data in files.items():
        Path(workdir, name).write_bytes(data)
    return tuple(str(Path(workdir, name)) for name in files)  # type: ignore[return-value]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def start(name: str, workdir: str, files: tuple[str, str, str]):
    """The server `name` serving NTS, afresh; it and its KE port."""
    _, cert, key = files
    ke_port = free_port(socket.SOCK_STREAM)
    nts_options = ["--no-line", "--nts-ke", str(ke_port), "--nts-cert", cert]
    nts_options += ["--nts-key", key, "--nts-cookie-keys", f"{workdir}/keys"]
    chrony_lines = (
        f"ntsport {ke_port}",
        f"ntsserverkey {key}",
        f"ntsservercert {cert}",
        f"ntsdumpdir {workdir}",
    )
    server = start_ntp_server(
        name, workdir, ROOT, [*OURS_NTP[:-1], *nts_options], chrony_lines
    )
    try:
        yield server, ke_port
    finally:
        server.stop()


def requests_file(session, path: str, count: int = POOL) -> str:
    """`count` NTS requests from one Key Establishment's session, each with
    its own Unique Identifier and transmit timestamp (what the reply's
    origin carries), written as the C generator reads them."""
    from timeservice.nts.aead import Aead

    client = Aead(session.c2s)
    with open(path, "wb") as out:
        for n in range(count):
            cookie = session.cookies[n % len(session.cookies)]
            packet = ntp.request_packet(int.from_bytes(os.urandom(8), "big"))
            packet += nts.field(nts.UNIQUE_IDENTIFIER, os.urandom(UNIQUE_BYTES))
            packet += nts.field(nts.COOKIE, cookie)
            nonce, sealed = client.seal(b"", packet)
            packet += nts.authenticator(nonce, sealed)
            out.write(struct.pack("!H", len(packet)) + packet)
    return path


def _establishing(ca, address, start, end, results, done) -> None:
    """One process of the KE load: exchange after exchange until `end`."""
    from timeservice.clients.nts import establish

    latencies, bad = [], 0
    while True:
        t0 = time.monotonic_ns()
        try:
            establish(address[0], address[1], ca=ca, timeout=5)
        except Exception:  # a failed exchange is counted, whatever it was
            bad += 1
        t1 = time.monotonic_ns()
        if t0 >= start:
            latencies.append(t1 - t0)
        if t1 >= end:
            break
    results.put((latencies, bad))
    done.wait(30)  # alive until the benchmark has read its CPU time


class KeLoad:
    """Python processes, each doing one Key Establishment after another."""

    label = "Python"

    def __init__(self, ca, address, connections, mode, start, end):
        context = multiprocessing.get_context("fork")
        self.parallel = connections
        self.results_queue, self.done = context.Queue(), context.Event()
        arguments = (ca, address, start, end, self.results_queue, self.done)
        self.processes = [
            context.Process(target=_establishing, args=arguments)
            for _ in range(connections)
        ]
        for process in self.processes:
            process.start()
        self.pids = [process.pid for process in self.processes]
        self.timeout = (end - time.monotonic_ns()) / 1e9 + 30

    def results(self) -> tuple[int, int, int, int]:
        got = [self.results_queue.get(timeout=self.timeout) for _ in self.processes]
        latencies = sorted(value for found, _ in got for value in found)
        bad = sum(failed for _, failed in got)
        if not latencies:
            return 0, bad, 0, 0
        return (len(latencies), bad, latencies[len(latencies) // 2],
                latencies[len(latencies) * 99 // 100])  # fmt: skip

    def stop(self) -> None:
        self.done.set()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


class KeTarget:
    """A server seen through its KE port: what run_load() measures."""

    def __init__(self, server, port: int):
        self.server, self.name = server, server.name
        self.address = ("127.0.0.1", port)

    def cpu(self) -> tuple[float, float]:
        return self.server.cpu()


def measure_round(number, workdir, files, binary, seconds, warmup, progress):
    """One round: each server afresh for each workload, in turns; the figures."""
    from timeservice.clients.nts import establish

    turn = number % len(SERVERS)
    figures: dict = {KE_WORKLOAD[0]: {}, NTS_WORKLOAD[0]: {}}
    for name in SERVERS[turn:] + SERVERS[:turn]:
        progress(name, KE_WORKLOAD[0])
        with start(name, workdir, files) as (server, ke_port):
            figures[KE_WORKLOAD[0]][name] = run_load(
                KeTarget(server, ke_port), *KE_WORKLOAD[1:], seconds, warmup,
                lambda *where: KeLoad(files[0], *where),
            )  # fmt: skip
        progress(name, NTS_WORKLOAD[0])
        with start(name, workdir, files) as (server, ke_port):
            session = establish("127.0.0.1", ke_port, ca=files[0], timeout=5)
            pool = requests_file(session, f"{workdir}/requests")
            figures[NTS_WORKLOAD[0]][name] = run_load(
                server, *NTS_WORKLOAD[1:], seconds, warmup,
                lambda *where, pool=pool: CLoad(binary, *where, pool),
            )  # fmt: skip
    return figures


def summarise(rounds: list[dict]) -> dict:
    """Each workload's medians and spreads, and ours against chronyd's."""
    report = {}
    for workload in (KE_WORKLOAD[0], NTS_WORKLOAD[0]):
        runs = {name: [r[workload][name] for r in rounds] for name in SERVERS}
        label = "Python" if workload == KE_WORKLOAD[0] else "C"
        results = {name: summary(found, label) for name, found in runs.items()}
        report[workload] = {"servers": results, "ratios": compare(results, "chronyd")}
    return report


def table(report: dict, names: dict) -> str:
    """The NTS rows, as the other rows are printed, with ours ÷ chronyd's."""
    out = ["", *HEADINGS]
    for workload, found in report.items():
        for i, (server, figures) in enumerate(found["servers"].items()):
            out.append(row(workload if i == 0 else "", names[server], figures))
        per = found["ratios"]["chronyd"]["server_us"]
        shown = "n/a" if per is None else f"{per:.2f}x"
        out.append(f"{'timeservice CPU per reply ÷ chronyd':<47} {shown:>8}")
    out.append(
        "NTS-KE: a reply is a whole Key Establishment (TLS 1.3 handshake, "
        "records, eight cookies); the load is Python, so its rate is the "
        "generator's as much as the server's: compare CPU per exchange."
    )
    return "\n".join(out)
