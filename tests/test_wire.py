"""The frame fast path against websockets' own parser, on the same bytes.

A raw TCP peer does the handshake and then writes a prepared byte stream in
awkward pieces (one byte, a frame and a half, the lot), so frames and headers are
split everywhere. Whatever arrives, the recording client (the link, the proxy's
upstream side) and the recording server (the proxy's UI side) must see exactly
what plain websockets connections see: the same messages, the same close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode

from recorder.capture.wire import RecordingClientConnection

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_SIZE = 100_000
# Both sides of every comparison, recording or plain, connect or serve with these.
OPTIONS: dict[str, Any] = {
    "max_size": MAX_SIZE,
    "compression": None,
    "ping_interval": None,
    "close_timeout": 1,
}


def frame(opcode: Opcode, data: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    raw = Frame(opcode, data, fin).serialize(mask=False)
    return bytes([raw[0] | 0x40]) + raw[1:] if rsv1 else raw


def masked(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
PLAIN = [
    frame(TEXT, b'{"type":"health_check_response","healthy":true}'),
    frame(TEXT, b"x" * 125),
    frame(TEXT, b"y" * 126),  # 16-bit length
    frame(BINARY, bytes(range(256)) * 200),  # 51 200 bytes, 16-bit length
    frame(TEXT, b"z" * 70_000),  # 64-bit length
    frame(TEXT, b"\xff\xfe invalid utf-8"),
    frame(BINARY, b""),
    frame(Opcode.PING, b"are you there"),
    frame(TEXT, b"after ping"),
    frame(TEXT, b"frag-1 ", fin=False),
    frame(Opcode.PONG, b"unsolicited"),
    frame(CONT, b"frag-2 ", fin=False),
    frame(CONT, b"frag-3"),
    frame(TEXT, b"after fragments"),
] + [frame(TEXT, b'{"type":"stream_chunk","i":%d}' % i) for i in range(300)]
CLOSE = frame(Opcode.CLOSE, Close(1000, "Server shutting down").serialize())

STREAMS = {
    "plain frames, then close": b"".join(PLAIN) + CLOSE,
    "64-bit length over the limit": b"".join(PLAIN[:3])
    + b"\x82\x7f"
    + struct.pack("!Q", MAX_SIZE + 1)
    + b"\x00" * 10,
    "16-bit length over the limit": b"".join(PLAIN[:3]) + frame(TEXT, b"q" * (MAX_SIZE + 1)),
    "reserved bit set": b"".join(PLAIN[:3]) + frame(TEXT, b"compressed?", rsv1=True) + CLOSE,
    "masked frame from a server": b"".join(PLAIN[:3]) + masked(TEXT, b"masked") + CLOSE,
    "data frame inside a fragmented message": frame(TEXT, b"a", fin=False)
    + frame(TEXT, b"b")
    + CLOSE,
    "ends in the middle of a frame": b"".join(PLAIN) + frame(TEXT, b"cut short")[:5],
}


async def client_close(reader: asyncio.StreamReader) -> None:
    """Read the client's (masked) frames up to its close frame."""
    while True:
        head, length = await reader.readexactly(2)
        length &= 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        await reader.readexactly(4 + length)
        if head & 0x0F == Opcode.CLOSE:
            return


async def serve_raw(stream: bytes, seed: int) -> tuple[asyncio.Server, int]:
    rng = random.Random(seed)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        pos = 0
        while pos < len(stream):
            size = rng.choice([1, 2, 3, 7, 64, 181, 1000, 65536])
            writer.write(stream[pos : pos + size])
            pos += size
            await writer.drain()
        if stream.endswith(CLOSE):
            try:  # a server closes TCP once it has the client's closing frame
                await asyncio.wait_for(client_close(reader), 5)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def receive_all(port: int, factory: type[ClientConnection]) -> dict[str, Any]:
    messages: list[tuple[bool, bytes]] = []
    async with connect(f"ws://127.0.0.1:{port}", create_connection=factory, **OPTIONS) as ws:
        try:
            while True:
                if isinstance(ws, RecordingClientConnection):
                    messages.append(await ws.recv_raw())
                else:
                    messages.append((True, await ws.recv(decode=False)))
        except ConnectionClosed:
            pass
    return {
        "messages": [data for _, data in messages],
        "close": (ws.close_code, ws.close_reason),
        "fast": getattr(ws.protocol, "fast_frames", None),
    }


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("case", list(STREAMS))
async def test_fast_path_sees_what_websockets_sees(case: str, seed: int) -> None:
    results = []
    for factory in (RecordingClientConnection, ClientConnection):
        server, port = await serve_raw(STREAMS[case], seed)
        async with server:
            async with asyncio.timeout(20):
                results.append(await receive_all(port, factory))
    ours, theirs = results
    assert ours["messages"] == theirs["messages"]
    assert ours["close"] == theirs["close"]
    if case == "plain frames, then close":
        assert len(ours["messages"]) == len(PLAIN) - 4  # ping, pong, two fragments joined
        assert ours["fast"] > 250


# --- the same for a server: frames from a client are masked --------------------------

CLIENT_PLAIN = [
    masked(TEXT, b'{"type":"list_sessions"}'),
    masked(TEXT, b"y" * 126),
    masked(TEXT, b"z" * 70_000),
    masked(BINARY, b""),
    masked(Opcode.PING, b"ping from the UI"),
    masked(TEXT, b"after ping"),
    Frame(TEXT, b"frag-1 ", fin=False).serialize(mask=True),
    masked(CONT, b"frag-2"),
] + [masked(TEXT, b'{"type":"session_status","i":%d}' % i) for i in range(300)]
CLIENT_CLOSE = Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True)
CLIENT_STREAMS = {
    "plain frames, then close": b"".join(CLIENT_PLAIN) + CLIENT_CLOSE,
    "unmasked frame from a client": b"".join(CLIENT_PLAIN[:3])
    + frame(TEXT, b"bare")
    + CLIENT_CLOSE,
    "ends in the middle of a frame": b"".join(CLIENT_PLAIN) + masked(TEXT, b"cut short")[:9],
}


async def raw_client(port: int, stream: bytes, seed: int) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 5, 64, 181, 1000, 65536])
        writer.write(stream[pos : pos + size])
        pos += size
        await writer.drain()
    if not stream.endswith(CLIENT_CLOSE):
        writer.close()
    try:
        await asyncio.wait_for(reader.read(), 5)  # the server closes TCP after its close
    except (TimeoutError, ConnectionError):
        pass
    writer.close()


async def serve_and_receive(stream: bytes, seed: int, factory: type[Any]) -> dict[str, Any]:
    from websockets.asyncio.server import serve

    done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        messages = []
        try:
            while True:
                if hasattr(ws, "recv_raw"):
                    messages.append((await ws.recv_raw())[1])
                else:
                    messages.append(await ws.recv(decode=False))
        except ConnectionClosed:
            pass
        done.set_result(
            {
                "messages": messages,
                "close": (ws.close_code, ws.close_reason),
                "fast": getattr(ws.protocol, "fast_frames", None),
            }
        )

    async with serve(handler, "127.0.0.1", 0, create_connection=factory, **OPTIONS) as server:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(20):
            await raw_client(port, stream, seed)
            return await done


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("case", list(CLIENT_STREAMS))
async def test_server_fast_path_sees_what_websockets_sees(case: str, seed: int) -> None:
    from websockets.asyncio.server import ServerConnection

    from recorder.capture.wire import RecordingServerConnection

    ours = await serve_and_receive(CLIENT_STREAMS[case], seed, RecordingServerConnection)
    theirs = await serve_and_receive(CLIENT_STREAMS[case], seed, ServerConnection)
    assert ours["messages"] == theirs["messages"]
    assert ours["close"] == theirs["close"]
    if case == "plain frames, then close":
        assert len(ours["messages"]) == len(CLIENT_PLAIN) - 2  # ping; two fragments joined
        assert ours["fast"] > 250
