"""The shape of the package, kept: which layer may import which (the rule in
docs/design.md), no import circle, wire formats without sockets, threads or
clock, a client that loads no server code, files one can read, and tests
laid out as the layers are."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "timeservice"
# Each layer, and the layers below it that it may import (and itself).
MAY_IMPORT = {
    "wire": {"wire"},
    "host": {"host", "wire"},
    "clock": {"wire", "host", "clock"},
    "policy": {"wire", "policy"},
    "transport": {"wire", "host", "clock", "policy", "transport"},
    "nts": {"wire", "nts"},  # NTS's cryptography, from the nts extra
    "servers": {"wire", "host", "clock", "policy", "transport", "nts", "servers"},
    "clients": {"wire", "clients", "nts"},  # the line protocol's timestamps: wire
    "operations": {"wire", "host", "clock", "policy", "transport", "operations"},
    "programs": {
        "nts",
        "wire",
        "host",
        "clock",
        "policy",
        "transport",
        "servers",
        "clients",
        "operations",
        "programs",
        "package",
    },
    "faces": set(),  # timeservice.server, .client, .skew: anything below
    "package": set(),  # timeservice/__init__.py: nothing
}
FACES = {"server", "client", "skew", "__main__"}
MOST_LINES = 400
NO_CLOCK_OR_IO = {"socket", "socketserver", "select", "selectors", "threading", "time"}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "package"
    if len(parts) == 2 and parts[1] in FACES:
        return "faces"
    return parts[1]


def imports_of(name: str, path: Path) -> set[str]:
    """The package's modules that a module imports (absolute or relative)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("timeservice")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("timeservice"):
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}
    known = modules()
    return {module for module in found if module in known and module != name}


def stdlib_imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for name, path in modules().items():
        layer = layer_of(name)
        allowed = MAY_IMPORT[layer]
        for imported in imports_of(name, path):
            if layer == "faces":
                if layer_of(imported) == "faces":
                    wrong.append(f"{name} imports the face {imported}")
                continue
            if layer_of(imported) not in allowed:
                wrong.append(f"{name} ({layer}) imports {imported}")
    assert wrong == []


def test_no_import_goes_in_a_circle():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    # A package imports its own modules only through them: the edges that
    # count are those between modules.
    done: set[str] = set()
    on_path: list[str] = []

    def visit(name: str) -> None:
        if name in on_path:
            cycle = on_path[on_path.index(name) :] + [name]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for imported in sorted(graph[name]):
            if not name.startswith(imported + "."):  # a module's own package
                visit(imported)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_wire_formats_read_no_socket_thread_or_clock():
    for name, path in modules().items():
        if layer_of(name) != "wire":
            continue
        assert stdlib_imports_of(path).isdisjoint(NO_CLOCK_OR_IO), name
        calls = {
            node.func.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert calls.isdisjoint({"now", "today", "utcnow", "time_ns"}), name


def test_each_module_reads_on_a_screen_or_two():
    long = {
        name: length
        for name, path in modules().items()
        if (length := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}


def loaded_by(module: str) -> list[str]:
    """The package's modules (and socketserver) that importing `module` loads."""
    code = (
        f"import sys, {module}; "
        "print(' '.join(m for m in sys.modules if m.startswith('timeservice.')"
        " or m == 'socketserver'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert loaded, "nothing loaded"
    return loaded


@pytest.mark.parametrize("face", ["timeservice.client", "timeservice.skew"])
def test_the_client_side_loads_no_server_code(face):
    # programs.starting holds a program's signals while it starts (signal,
    # sys, threading): every face imports it first, and it holds nothing
    # unless the face is the program.
    loaded = set(loaded_by(face)) - {"timeservice.programs", STARTING}
    server_side = [
        m
        for m in loaded
        if m == "socketserver"
        or layer_of(m) in {"transport", "servers", "operations", "programs", "policy"}
    ]
    assert server_side == []


STARTING = "timeservice.programs.starting"


def test_the_signal_holding_at_start_up_imports_nothing_of_the_package():
    path = modules()[STARTING]
    assert imports_of(STARTING, path) == set()


def test_the_ntp_server_loads_no_line_protocol_code():
    """2.0.0's NTP server imported the one-shot servers, which imported the
    line server for its handle_error()."""
    loaded = loaded_by("timeservice.servers.ntp")
    assert "timeservice.servers.ntp" in loaded
    assert [m for m in loaded if m.endswith(".line") or m.endswith(".oneshot")] == []


def test_the_line_protocol_lives_in_its_server_and_its_wire_format():
    """Below the servers, nothing imports the line protocol's text: the
    registry says why (a cause), the line server says it (ERR ...); and the
    clock is one interface the protocols read."""
    for name, path in modules().items():
        if layer_of(name) in {"transport", "clock", "policy", "host", "operations"}:
            assert "timeservice.wire.line" not in imports_of(name, path), name
    clock = (PACKAGE / "clock" / "system.py").read_text()
    assert "format_timestamp" not in clock and "ERR" not in clock


def test_one_way_to_log_a_handlers_error_for_each_kind_of_transport():
    defined = [
        name
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "handle_error"
    ]
    assert defined == ["timeservice.transport.loop"]


def test_one_function_says_who_a_source_is():
    """Every part that decides by source (the access list, what a source may
    get, the connection caps, this host's own addresses) asks
    wire.addresses.source_of(); none reads a client's address itself (an
    IPv4-mapped one, a scope), so they cannot disagree."""
    deciders = {
        "timeservice.policy.access",
        "timeservice.policy.sources",
        "timeservice.host.local",
    }
    reading = {"ip_address", "IPv4Address", "IPv6Address", "ipv4_mapped"}
    for name in deciders:
        path = modules()[name]
        tree = ast.parse(path.read_text())
        assert "timeservice.wire.addresses" in imports_of(name, path), name
        used = {
            node.attr if isinstance(node, ast.Attribute) else node.id
            for node in ast.walk(tree)
            if isinstance(node, (ast.Attribute, ast.Name))
        }
        # access.py reads rules' subnets (as_clients_are), never a client.
        allowed = {"ipv4_mapped"} if name.endswith("access") else set()
        assert used & reading <= allowed, name


def test_the_tests_are_laid_out_as_the_layers():
    """Each folder of tests is a layer of the package, and every layer has
    one; what crosses them all stays in tests/ itself."""
    folders = {
        path.name
        for path in (ROOT / "tests").iterdir()
        if path.is_dir() and any(path.glob("test_*.py"))
    }
    layers = {
        path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()
    }
    assert folders == layers
