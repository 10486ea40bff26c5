"""Transports: socketserver's parts, one concern each, that the servers are
composed from: settings, admission, the stream registry, the thread pool,
the accept back-off, addresses, the datagram server with its one send path,
and a bounded HTTP endpoint."""
