"""The asyncio documentation's TCP echo server (docs.python.org, "Streams": TCP echo server
using streams), with one change: the import. hamanet.aio offers asyncio's streams
(``start_server``, ``StreamReader``, ``StreamWriter``) over hamanet's Rust reactor, driven
by the asyncio loop, with the receive buffer and the separator search in Rust.

Run it and try ``nc 127.0.0.1 8888``."""

import hamanet.aio as asyncio  # the one change: was `import asyncio`


async def handle_echo(reader, writer):
    data = await reader.read(100)
    message = data.decode()
    addr = writer.get_extra_info("peername")

    print(f"Received {message!r} from {addr!r}")

    print(f"Send: {message!r}")
    writer.write(data)
    await writer.drain()

    print("Close the connection")
    writer.close()
    await writer.wait_closed()


async def main():
    server = await asyncio.start_server(handle_echo, "127.0.0.1", 8888)

    addrs = ", ".join(str(sock.getsockname()) for sock in server.sockets)
    print(f"Serving on {addrs}")

    async with server:
        await server.serve_forever()


asyncio.run(main())
