"""An asyncio streams time server as a benchmark peer, written as the docs show.

It answers 'send time' with the timestamp format timeservice uses, listens on
a free port on loopback and prints it.
"""

import asyncio
from datetime import datetime


async def handle(reader, writer):
    try:
        while line := await reader.readline():
            if line.rstrip(b"\r\n") == b"send time":
                now = datetime.now().astimezone().isoformat(timespec="microseconds")
                writer.write(f"{now}\n".encode())
            else:
                writer.write(b"ERR unknown request\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"Serving on port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
