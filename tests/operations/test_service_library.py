"""Several servers in one service, as a library."""

from __future__ import annotations

import threading

import pytest
from conftest import TIMEOUT, RecordingServer, bounded, timestamp

from timeservice.operations import service


def test_a_service_serves_several_servers_and_stops_them_together(connect):
    servers = [RecordingServer(("127.0.0.1", 0)) for _ in range(2)]
    both = service.Service(servers)
    serving = threading.Thread(target=both.serve_forever, args=(0.01,))
    serving.start()
    try:
        connections = [connect(server) for server in servers]
        for connection in connections:
            timestamp(connection.ask())
    finally:
        bounded(both.stop)
        serving.join(TIMEOUT)
    assert not serving.is_alive()
    for server, connection in zip(servers, connections, strict=True):
        assert server.socket.fileno() == -1
        assert connection.line() == b"ERR server shutting down\n"
    with pytest.raises(ValueError):
        service.Service([])
