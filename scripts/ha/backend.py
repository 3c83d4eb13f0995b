#!/usr/bin/env python3
"""A backend for scripts/ha-test.sh that says who it is.

On accept it writes "NAME via PEER\n" (PEER: the address the connection came
from, i.e. which ringlb host carried it). Then, if the client sends
"BULK <bytes> <delay_ms>\n", it writes "LEN <bytes>\n" and that many bytes
of a fixed pattern (byte i is i % 251) in 16 KiB chunks, pausing delay_ms
between chunks, and closes; anything else is echoed until EOF.
"""
import argparse
import asyncio

CHUNK = 16 * 1024
CYCLE = bytes(range(251)) * ((CHUNK // 251) + 2)


def pattern(offset, length):
    start = offset % 251
    return CYCLE[start:start + length]


async def serve(reader, writer, name):
    peer = writer.get_extra_info("peername")[0]
    try:
        writer.write(f"{name} via {peer}\n".encode())
        await writer.drain()
        line = await reader.readline()
        words = line.split()
        if len(words) == 3 and words[0] == b"BULK":
            total, delay = int(words[1]), int(words[2]) / 1000.0
            writer.write(f"LEN {total}\n".encode())
            sent = 0
            while sent < total:
                n = min(CHUNK, total - sent)
                writer.write(pattern(sent, n))
                await writer.drain()
                sent += n
                if delay:
                    await asyncio.sleep(delay)
        elif line:
            writer.write(line)
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, a.name), a.bind, a.port, backlog=1024, reuse_address=True
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
