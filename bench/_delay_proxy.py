"""A TCP proxy that delays every byte by a fixed one-way latency: a network round trip for emulated devices.

This kernel has no netem qdisc, so latency is added in user space. Run as its own process (it must
not share the GIL with the deploys it delays):

    python bench/_delay_proxy.py --one-way-ms 5 NAME=HOST:PORT [NAME=HOST:PORT ...]

It listens on 127.0.0.1, one port per target, prints {"NAME": port, ...} as one JSON line once all
are listening, and runs until killed. Bytes keep their order; each chunk is delivered one-way-ms
after it was read, and a half-close travels the same way. What it does not model: bandwidth and the
TCP window (a bulk transfer is not slowed by the latency as it would be on a real link).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivery = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                break
        await delivery
    except (ConnectionError, OSError):
        delivery.cancel()


async def _serve(targets: dict[str, tuple[str, int]], delay_s: float) -> None:
    async def handler_for(host: str, port: int):
        async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            try:
                server_reader, server_writer = await asyncio.open_connection(host, port)
            except OSError:
                client_writer.close()
                return
            try:
                await asyncio.gather(_pump(client_reader, server_writer, delay_s),
                                     _pump(server_reader, client_writer, delay_s))
            finally:
                for writer in (client_writer, server_writer):
                    writer.close()
        return handle

    loop = asyncio.get_running_loop()

    def quiet_about_dead_connections(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # A connection whose two ends are both gone is garbage-collected with its pumps still pending;
        # asyncio reports each one. Nothing is lost: its bytes were delivered or had nowhere to go.
        if "destroyed but it is pending" not in context.get("message", ""):
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_about_dead_connections)
    ports = {}
    servers = []
    for name, (host, port) in targets.items():
        server = await asyncio.start_server(await handler_for(host, port), "127.0.0.1", 0)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-way-ms", type=float, required=True)
    parser.add_argument("targets", nargs="+", metavar="NAME=HOST:PORT")
    args = parser.parse_args()
    targets = {}
    for spec in args.targets:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit():
            parser.error(f"not NAME=HOST:PORT: {spec!r}")
        targets[name] = (host, int(port))
    try:
        asyncio.run(_serve(targets, args.one_way_ms / 1000.0))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
