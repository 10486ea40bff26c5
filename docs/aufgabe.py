"""Aufgabe 1.4 in 40 Zeilen: ein Server beantwortet "send time" mit Datum und
Uhrzeit, ein Client fragt und gibt die Antwort aus, beide in zwei Threads
eines Programms. Aufruf: python3 docs/aufgabe.py [PORT]  (0: ein freier Port)
"""

import socket
import socketserver
import sys
import threading
from datetime import datetime

HOST, PORT = "127.0.0.1", 5000  # feste Portnummer, wie die Aufgabe es will


class TimeRequestHandler(socketserver.StreamRequestHandler):
    """Ein Thread je Verbindung: beantwortet Zeile um Zeile, bis der Client schließt."""

    def handle(self):
        for line in self.rfile:  # eine Anfrage ist eine Zeile
            if line.strip() == b"send time":
                answer = datetime.now().astimezone().isoformat()
            else:
                answer = "ERR unknown request, expected 'send time'"
            self.wfile.write(answer.encode() + b"\n")


def client(host, port):
    """Fragt einmal nach der Zeit und gibt die Antwort zur Kontrolle aus."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"send time\n")
        answer = sock.makefile("rb").readline().decode().strip()
    print("Antwort des Servers:", answer)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else PORT
    with socketserver.ThreadingTCPServer((HOST, port), TimeRequestHandler) as server:
        serving = threading.Thread(target=server.serve_forever)  # Thread 1: Server
        serving.start()
        host, port = server.server_address  # der Port, der wirklich gebunden ist
        asking = threading.Thread(target=client, args=(host, port))  # Thread 2: Client
        asking.start()
        asking.join()
        server.shutdown()
        serving.join()
