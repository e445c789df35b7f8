"""A small fault-injecting TCP proxy for the chaos run (bench/chaos.py).

It listens on a loopback port and forwards every connection to a target. Faults:

* ``cut()``   closes every open connection at once, both sides, with a reset (as a dropped
  network path or a restarted load balancer would): clients see the connection die mid-request.
* ``stall()`` keeps the connections open but holds every byte until ``resume()`` (a network
  partition that TCP does not notice): requests and replies wait, then arrive late.

New connections are accepted during a stall and stall too; a target that is down (a killed
nats-server) makes the proxy close the client's connection at once, so the client's reconnect
logic is what is exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultProxy:
    def __init__(self, name: str, target_port: int, *, host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.name = name
        self.host = host
        self.target_port = target_port
        self.listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._open = asyncio.Event()
        self._open.set()
        self.connections = 0
        self.cuts = 0
        self.stalls = 0

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.listen_port}"

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()
        self.cuts += 1
        return len(links)

    def stall(self) -> None:
        self._open.clear()
        self.stalls += 1

    def resume(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.target_port), timeout=2
            )
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        link.abort()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                if not self._open.is_set():
                    await self._open.wait()
                if link not in self._links:  # cut while the bytes were held
                    return
                sink.write(data)
                await sink.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            # One direction ended: the whole connection ends (the other pipe sees its reset).
            link.abort()
