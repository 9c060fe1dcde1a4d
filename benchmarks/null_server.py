"""A server that does no work: the load generator's own ceiling on this box.

A serving figure means something only while the client can offer more than the server
carries. This answers every request (any method, any path) at once with a fixed small
JSON body, reading the request (head and ``Content-Length`` body) from a raw asyncio
protocol, with no framework, no decoding and no model. The highest rate the serving benchmark's criterion
holds against it is what the generator and the loopback sockets can do on this box beside
one server process; every other server's rate should sit well below it.

    python benchmarks/null_server.py --port 8103
"""

from __future__ import annotations

import argparse
import asyncio
import gc

ANSWER = b'{"output":[0.0],"model":"null"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)


class NullProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1 requests answered as soon as their bodies are in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return  # the body is not all in yet
            del self.buffer[: end + 4 + length]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullProtocol, "127.0.0.1", port)
    gc.collect()
    gc.freeze()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8103)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
