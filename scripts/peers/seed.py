"""The assignment's sketch as a benchmark peer: a thread per connection, recv(1024).

Changed from the sketch only where the benchmark needs it: it answers
'send time' (with a line feed) in timeservice's timestamp format, listens on
a free port and prints it, and leaves out the print() per connection.
"""

import socket
import threading
from datetime import datetime


def handle_client(conn, addr):
    with conn:
        while True:
            data = conn.recv(1024)
            if not data:
                break
            if data.decode("utf-8") == "send time\n":
                now = datetime.now().astimezone().isoformat(timespec="microseconds")
                conn.sendall(f"{now}\n".encode())
            else:
                conn.sendall(b"Unbekannte Anfrage\n")


def start_server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        print(f"Serving on port {s.getsockname()[1]}", flush=True)
        while True:
            conn, addr = s.accept()
            client_thread = threading.Thread(target=handle_client, args=(conn, addr))
            client_thread.start()


if __name__ == "__main__":
    start_server()
