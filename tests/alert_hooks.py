"""Notification targets on loopback for the alert tests: a small HTTP server that
takes Apprise's ``json://127.0.0.1:PORT/...`` posts, and can be down (connection
refused on its port), up, or hung (it accepts and never answers); and a writer
stand-in that runs operations on the writer's own code and tells what it recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any, TypeVar

from recorder.cleanup.actor import Direct
from recorder.pipeline.alert_ops import RecordDelivery
from recorder.pipeline.ops import Operation

T = TypeVar("T")


def free_port() -> int:
    """A port nothing listens on (connection refused), for a target that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hook:
    """A JSON webhook target: each post's JSON body lands in :attr:`posts`. ``hang``:
    it reads the request and never answers (a read timeout ends the wait);
    ``trickle``: it answers a byte at a time, for ever (no socket timeout ends it)."""

    def __init__(
        self, port: int | None = None, *, hang: bool = False, trickle: bool = False
    ) -> None:
        self.port = port if port is not None else free_port()
        self.hang = hang
        self.trickle = trickle
        self.posts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # Connections accepted, and those open now.
        self.accepted = 0
        self.open = 0
        # Set once a request has been read whole (a hung hook's too).
        self.asked = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    async def start(self) -> Hook:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def next_post(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.posts.get(), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            self.asked.set()
            if self.hang:
                await asyncio.Event().wait()  # until stopped
            if self.trickle:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while True:  # until stopped
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            self.posts.put_nowait({"path": head.split(b" ")[1].decode(), **json.loads(body)})
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Recorded(Direct):
    """Operations run on the writer's own code (a :class:`WriterDatabase` and its
    :class:`Store`), each recorded delivery attempt also put in :attr:`deliveries`."""

    def __init__(self, db: Any, store: Any) -> None:
        super().__init__(db, store)
        self.deliveries: asyncio.Queue[RecordDelivery] = asyncio.Queue()

    async def perform(self, operation: Operation[T]) -> T:
        answer = await super().perform(operation)
        if isinstance(operation, RecordDelivery):
            self.deliveries.put_nowait(operation)
        return answer

    async def next_delivery(self, timeout: float = 10.0) -> RecordDelivery:
        return await asyncio.wait_for(self.deliveries.get(), timeout)
