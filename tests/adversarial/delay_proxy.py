"""A TCP proxy that delays every chunk the server sends back: a slow Redis, for the limiter tests.

    python tests/adversarial/delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS

Prints ``ready`` once it listens. Killing the process is Redis "down" (connections reset, new
ones refused); starting it again on the same port is Redis "back".
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while chunk := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(listen: int, target: int, delay: float) -> None:
    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, 0), _pipe(server_r, client_w, delay))

    server = await asyncio.start_server(serve, "127.0.0.1", listen, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000))
