"""Daemons written by hand over asyncio streams, speaking the WebSocket wire
themselves, so that a test decides every byte the recorder gets and its pace."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import struct
from typing import Any

from tests.cleanup_scripts import chunk

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        length = bytes([n])
    elif n < 1 << 16:
        length = bytes([126]) + struct.pack("!H", n)
    else:
        length = bytes([127]) + struct.pack("!Q", n)
    return bytes([0x80 | opcode]) + length + payload


class SlowNetworkDaemon:
    """A daemon that reads and answers every ping and protocol ping, behind a network
    that carries ``rate`` bytes/s to the recorder: its first connection gets a frame of
    ``size`` bytes first, and a pong asked for meanwhile waits behind it on the wire, as
    it would behind any frame (a WebSocket frame is not interleaved)."""

    def __init__(self, size: int, rate: int) -> None:
        self.size, self.rate = size, rate
        self.answers_close = True
        self.connections = 0
        self.handlers: set[asyncio.Task[Any]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.append(writer)
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        wire = asyncio.Lock()

        async def send(data: bytes, step: int) -> None:
            async with wire:
                for at in range(0, len(data), step):
                    if writer.is_closing():
                        return  # the recorder hung up
                    writer.write(data[at : at + step])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    if step < len(data):
                        await asyncio.sleep(step / self.rate)

        answering = asyncio.ensure_future(self._answer(reader, writer, send))
        await self.speak(send, self.connections, writer)
        await answering

    async def hang_up(self) -> None:
        """Drop every connection at once, and wait for their handlers to end."""
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def speak(self, send: Any, number: int, writer: asyncio.StreamWriter) -> None:
        """What the daemon sends on its connection ``number``."""
        if number == 1:
            big = json.dumps({"type": "sessions_list", "sessions": [], "pad": "x" * self.size})
            await send(ws_frame(1, big.encode()), self.rate // 20)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, send: Any
    ) -> None:
        try:
            while True:
                first, second = await reader.readexactly(2)
                n = second & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await reader.readexactly(8))[0]
                mask = await reader.readexactly(4)
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
                opcode = first & 0x0F
                answer = None
                if opcode == 0x9:
                    answer = ws_frame(0xA, payload)
                elif opcode == 0x1 and b'"ping"' in payload:
                    answer = ws_frame(0x1, b'{"type":"pong"}')
                if answer is not None:  # sent once the wire is free, while reading on
                    pending = asyncio.ensure_future(send(answer, 1 << 30))
                    self.handlers.add(pending)
                elif opcode == 0x8 and self.answers_close:
                    await send(ws_frame(0x8, payload[:2]), 1 << 30)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


class StubbornDaemon(SlowNetworkDaemon):
    """Sends stream chunks to every connection as fast as it is let, answers pings,
    and never answers a close."""

    def __init__(self) -> None:
        super().__init__(size=0, rate=1 << 30)
        self.answers_close = False

    async def speak(self, send: Any, number: int, writer: asyncio.StreamWriter) -> None:
        for i in itertools.count():
            if writer.is_closing():
                return
            await send(ws_frame(1, chunk("session_firehose", f"{i} " + "x" * 2000)), 1 << 30)
