"""The library's faces agree: every public name says what it is, one
measure_offset() for every protocol, durations in seconds, and TimeServer
passes CPython's own socketserver tests in ThreadingTCPServer's place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import socketserver
import types
import unittest

import pytest
from conftest import port_of

import timeservice
from timeservice import client, skew
from timeservice.server import (
    DaytimeHandler,
    NtpHandler,
    NtpServer,
    OneShotServer,
    TimeHandler,
    TimeServer,
)
from timeservice.transport.datagram import DatagramServer


def public_names() -> list[tuple[str, object]]:
    """Every public class and function of the package, and every public
    method and property of those classes, by dotted name."""
    found = []
    for info in pkgutil.walk_packages(timeservice.__path__, "timeservice."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != info.name:
                continue
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            found.append((f"{info.name}.{name}", value))
            if not inspect.isclass(value):
                continue
            for attribute, member in vars(value).items():
                if attribute.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    found.append(
                        (f"{info.name}.{name}.{attribute}", getattr(value, attribute))
                    )
    return found


def test_every_public_name_has_a_docstring():
    names = public_names()
    assert len(names) > 200  # the walk found the package
    # inspect.getdoc() takes an override's docstring from the method it overrides.
    assert [name for name, value in names if not inspect.getdoc(value)] == []


def test_one_name_for_one_idea_across_the_faces():
    """No name of one face stands for another thing in another face, so a
    program that imports from all three gets what each means."""
    faces = [timeservice.server, client, skew]
    seen: dict[str, object] = {}
    for face in faces:
        for name in face.__all__:
            value = getattr(face, name)
            assert seen.setdefault(name, value) is value, name


@pytest.mark.parametrize(
    "protocol, server_class, handler, udp",
    [
        ("line", TimeServer, None, False),
        ("daytime", OneShotServer, DaytimeHandler, False),
        ("daytime", DatagramServer, DaytimeHandler, True),
        ("time", OneShotServer, TimeHandler, False),
        ("time", DatagramServer, TimeHandler, True),
        ("ntp", NtpServer, NtpHandler, True),
    ],
)
def test_measure_offset_works_for_every_protocol(
    serve, protocol, server_class, handler, udp
):
    settings = {"local_stratum": 10, "upstream": None} if protocol == "ntp" else {}
    if server_class is TimeServer:
        server = serve(server_class, None, **settings)
    else:
        server = serve(server_class, handler, **settings)
    estimate = client.measure_offset(
        "127.0.0.1", port_of(server), protocol=protocol, udp=udp, samples=3, burst=True
    )
    assert len(estimate.samples) == 3
    assert abs(estimate.offset) <= estimate.error  # one machine's clock
    # Durations are seconds, as floats, on every face.
    assert isinstance(estimate.delay, float) and 0 < estimate.delay < 5
    assert all(isinstance(s.delay, float) for s in estimate.samples)
    assert estimate.delay == estimate.best.delay_ns / 1e9


def test_a_subclass_of_the_ntp_handler_gets_its_instance_per_datagram(serve):
    """The stock handler costs no instance; one that overrides setup(),
    handle() or finish() is made for each datagram, as socketserver makes
    them, and still answers through the server."""
    seen = []

    class Noting(NtpHandler):
        def setup(self):
            seen.append(("setup", self.client_address[0]))

        def handle(self):
            seen.append(("handle", len(self.request[0])))
            super().handle()

    server = serve(NtpServer, Noting, local_stratum=10, upstream=None)
    sample = client.ask_ntp("127.0.0.1", port_of(server))
    assert abs(sample.offset) <= sample.error
    assert seen == [("setup", "127.0.0.1"), ("handle", 48)]


def test_measure_offset_names_an_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'http'"):
        client.measure_offset("127.0.0.1", 80, protocol="http")


# CPython's own tests, with TimeServer in ThreadingTCPServer's place.

try:
    from test import test_socketserver as cpython
except ImportError:  # an interpreter installed without its test suite
    cpython = None


def socketserver_with(**replaced: type) -> types.ModuleType:
    """socketserver as CPython's tests see it, with some classes replaced."""
    module = types.ModuleType("socketserver")
    module.__dict__.update(vars(socketserver))
    module.__dict__.update(replaced)
    return module


# Each case, and what stands in for which class in it. TimeServer is a
# ThreadingMixIn and a TCPServer in one: where a case makes its server of
# both, TimeServer takes the mix-in's place and the TCPServer adds nothing.
CASES = [
    ("SocketServerTest.test_ThreadingTCPServer", {"ThreadingTCPServer": TimeServer}),
    ("SocketServerTest.test_close_immediately", {"ThreadingMixIn": TimeServer}),
    ("SocketServerTest.test_context_manager", {"TCPServer": TimeServer}),
    ("SocketServerTest.test_shutdown", {"TCPServer": TimeServer}),
    ("SocketWriterTest.test_basics", {"TCPServer": TimeServer}),
    ("MiscTestCase.test_threads_reaped", {"ThreadingMixIn": TimeServer}),
]


@pytest.mark.skipif(cpython is None, reason="this Python ships without its tests")
@pytest.mark.parametrize("case, replaced", CASES, ids=[c for c, _ in CASES])
def test_cpythons_socketserver_tests_pass_with_timeserver(monkeypatch, case, replaced):
    assert cpython is not None
    monkeypatch.setattr(cpython, "socketserver", socketserver_with(**replaced))
    suite = unittest.defaultTestLoader.loadTestsFromName(case, cpython)
    result = unittest.TestResult()
    suite.run(result)
    assert result.testsRun == 1
    assert not result.skipped, result.skipped
    assert result.wasSuccessful(), result.errors + result.failures
