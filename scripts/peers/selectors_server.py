"""A single-threaded time server on selectors: the reach of Python's TCP cost.

It accepts every pending connection at a wake-up, answers each complete
'send time' line at once in timeservice's timestamp format, and keeps a
connection registered until its client closes it. No limits, no deadlines:
what it costs is the floor this server's TCP loop is measured against. It
listens on a free loopback port and prints it.
"""

import selectors
import socket
from datetime import datetime

REQUEST = b"send time\n"


def now_line() -> bytes:
    return datetime.now().astimezone().isoformat(timespec="microseconds").encode()


def accept(listener, selector):
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ, b"")


def serve(conn, selector, pending):
    try:
        data = conn.recv(4096)
    except ConnectionError:
        data = b""
    if not data:
        selector.unregister(conn)
        conn.close()
        return
    lines = (pending + data).split(b"\n")
    replies = [now_line() + b"\n" if line + b"\n" == REQUEST else b"ERR unknown\n"
               for line in lines[:-1]]  # fmt: skip
    selector.modify(conn, selectors.EVENT_READ, lines[-1])
    try:
        conn.sendall(b"".join(replies))
    except (BlockingIOError, ConnectionError):  # a client that does not read
        selector.unregister(conn)
        conn.close()


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    print(f"Serving on port {listener.getsockname()[1]}", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                accept(listener, selector)
            else:
                serve(key.fileobj, selector, key.data)


if __name__ == "__main__":
    main()
