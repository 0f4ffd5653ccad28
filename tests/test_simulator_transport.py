"""The simulated daemon's transport: HTTP and auth, misbehaviour on demand, the journal, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

from recorder.simulator import (
    HEALTH_CHECK_FRAME,
    JournalEntry,
    Simulator,
    authenticate,
    firehose_template,
    iso_from_ms,
    serve,
)
from tests.sim_client import (
    TIMEOUT,
    expect_close,
    http_get,
    open_client,
    options,
    recv_text,
)

# --------------------------------------------------------------------------- HTTP and auth


async def test_health_endpoint_and_plain_http() -> None:
    async with Simulator(options()) as sim:
        status, headers, body = await http_get(sim.port, "/health")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        health = json.loads(body)
        assert list(health) == ["status", "uptime", "activeSessions"]
        assert health["status"] == "healthy"
        assert isinstance(health["uptime"], int)
        assert health["activeSessions"] == 0
        status, _, _ = await http_get(sim.port, "/")
        assert status == 426  # websockets' own answer to a non-WebSocket request
        assert sim.total_connections == 0


async def rejected(url: str, **kwargs: Any) -> tuple[int, Any, str]:
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(TIMEOUT):
            await connect(url, **kwargs)
    response = info.value.response
    return response.status_code, json.loads(response.body), response.headers["Content-Type"]


async def test_token_auth() -> None:
    async with Simulator(options(token="s3cret")) as sim:
        missing = await rejected(sim.url)
        assert missing == (401, {"error": "credentials_missing"}, "application/json")
        wrong = await rejected(sim.url, additional_headers={"Authorization": "Bearer nope"})
        assert wrong == (401, {"error": "jwt_invalid"}, "application/json")
        assert (await rejected(sim.url + "/?token=nope"))[1] == {"error": "jwt_invalid"}
        ws = await open_client(sim, additional_headers={"Authorization": "Bearer s3cret"})
        await ws.close()
        async with connect(sim.url + "/?token=s3cret") as by_query:
            assert await recv_text(by_query) == HEALTH_CHECK_FRAME
        assert sim.total_connections == 2


async def test_api_key_auth() -> None:
    async with Simulator(options(api_key="k3y")) as sim:
        assert (await rejected(sim.url))[1] == {"error": "credentials_missing"}
        wrong = await rejected(sim.url, additional_headers={"x-api-key": "bad"})
        assert wrong == (401, {"error": "api_key_invalid"}, "application/json")
        async with connect(sim.url, additional_headers={"X-API-Key": "k3y"}) as ws:
            assert await recv_text(ws) == HEALTH_CHECK_FRAME
        async with connect(sim.url + "/?apiKey=k3y") as ws:
            assert await recv_text(ws) == HEALTH_CHECK_FRAME


def test_authenticate_rules() -> None:
    empty = Headers()
    assert authenticate(None, None, empty, {}) is None
    assert authenticate("t", None, Headers([("Authorization", "bearer t")]), {}) is None
    assert authenticate("t", "k", empty, {"apiKey": ["k"]}) is None
    assert authenticate("t", "k", empty, {"apiKey": ["x"]}) == "api_key_invalid"
    assert authenticate("t", None, Headers([("Authorization", "Basic dTpw")]), {}) == (
        "credentials_missing"
    )


async def test_connection_limit_answers_429() -> None:
    async with Simulator(options(max_connections=2)) as sim:
        first = await open_client(sim)
        second = await open_client(sim)
        over = await rejected(sim.url)
        assert over == (429, {"error": "connection_limit_exceeded"}, "application/json")
        # /health is not a connection and stays reachable.
        assert (await http_get(sim.port, "/health"))[0] == 200
        await first.close()
        await second.close()


async def test_token_expiry_closes_with_4001() -> None:
    async with Simulator(options(token="s3cret", expire_token_after=0.05)) as sim:
        ws = await open_client(sim, additional_headers={"Authorization": "Bearer s3cret"})
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4001, "Token expired")


# --------------------------------------------------------------------------- misbehaviour


async def test_forced_disconnect_after_n_frames_within_budget() -> None:
    async with Simulator(options(disconnect_after=3, disconnects=1)) as sim:
        ws = await open_client(sim)  # frame 1
        await ws.send('{"type":"ping"}')
        await ws.send('{"type":"ping"}')
        await ws.send('{"type":"ping"}')
        assert await recv_text(ws) == '{"type":"pong"}'  # frame 2
        assert await recv_text(ws) == '{"type":"pong"}'  # frame 3, then the close
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1012, "Service restart")
        assert sim.forced_disconnects == 1

        # The budget is spent: the next connection lives on.
        again = await open_client(sim)
        for _ in range(5):
            await again.send('{"type":"ping"}')
            assert await recv_text(again) == '{"type":"pong"}'
        assert sim.forced_disconnects == 1
        sent_on_first = [e for e in sim.journal if e.conn == 1 and e.direction == "sent"]
        assert len(sent_on_first) == 3
        await again.close()


async def test_firehose_sends_every_frame_in_order() -> None:
    count = 5000
    async with Simulator(options(firehose=count, firehose_size=180)) as sim:
        ws = await open_client(sim)
        frames = [await recv_text(ws) for _ in range(count + 1)]
        session_id = None
        for index, text in enumerate(frames[:-1]):
            assert 175 <= len(text) <= 185
            frame = json.loads(text)
            assert frame["type"] == "stream_chunk"
            assert frame["data"]["metadata"] == {"type": "text", "index": index}
            session_id = session_id or frame["data"]["sessionId"]
            assert frame["data"]["sessionId"] == session_id
        assert session_id is not None and session_id.startswith("session_firehose_")
        end = {"type": "stream_end", "data": {"sessionId": session_id}}
        assert json.loads(frames[-1]) == end
        sent = [e.data for e in sim.journal if e.direction == "sent"]
        assert sent == [HEALTH_CHECK_FRAME, *frames]
        await ws.close()


async def test_firehose_obeys_forced_disconnect() -> None:
    async with Simulator(options(firehose=100, disconnect_after=50, disconnects=1)) as sim:
        ws = await open_client(sim)
        indices = []
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    indices.append(json.loads(await ws.recv())["data"]["metadata"]["index"])
        assert indices == list(range(49))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_broadcast_raw_sends_exact_data() -> None:
    async with Simulator(options()) as sim:
        one = await open_client(sim)
        two = await open_client(sim)
        await sim.broadcast_raw("not json at all")
        await sim.broadcast_raw(b"\x00\xffbinary")
        for ws in (one, two):
            assert await recv_text(ws) == "not json at all"
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == b"\x00\xffbinary"
        # Invalid UTF-8 in a TEXT frame: a strict client must fail the connection.
        await sim.broadcast_raw(b"\xc3\x28", text=True)
        closed = await expect_close(one)
        assert closed.sent is not None and closed.sent.code == 1007
        sent = [(e.conn, e.data) for e in sim.journal if e.direction == "sent"]
        assert sent[-2:] == [(1, b"\xc3\x28"), (2, b"\xc3\x28")]
        await two.close()


async def test_disconnect_all() -> None:
    async with Simulator(options()) as sim:
        ws = await open_client(sim)
        await sim.disconnect_all(4000, "bye")
        closed = await expect_close(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "bye")


# --------------------------------------------------------------------------- journal


async def test_journal_records_both_directions_exactly(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    async with Simulator(options(journal_path=str(path))) as sim:
        ws = await open_client(sim)
        await ws.send('{"type":"ping"}')
        await recv_text(ws)
        await ws.send("garbage")
        await recv_text(ws)
        await ws.send(b"\x01\x02")
        await recv_text(ws)
        await ws.close()
        invalid = '{"type":"error","error":"Invalid message format"}'
        expected = [
            JournalEntry(1, "sent", HEALTH_CHECK_FRAME),
            JournalEntry(1, "received", '{"type":"ping"}'),
            JournalEntry(1, "sent", '{"type":"pong"}'),
            JournalEntry(1, "received", "garbage"),
            JournalEntry(1, "sent", invalid),
            JournalEntry(1, "received", b"\x01\x02"),
            JournalEntry(1, "sent", invalid),
        ]
        assert sim.journal == expected
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines[0] == {"conn": 1, "direction": "sent", "text": HEALTH_CHECK_FRAME}
        assert lines[5] == {
            "conn": 1,
            "direction": "received",
            "b64": base64.b64encode(b"\x01\x02").decode(),
        }
        assert len(lines) == len(expected)


async def test_wait_connections_counts_every_accepted_connection() -> None:
    async with Simulator(options()) as sim:
        waiter = asyncio.create_task(sim.wait_connections(2, TIMEOUT))
        first = await open_client(sim)
        assert not waiter.done()
        second = await open_client(sim)
        await waiter
        assert sim.total_connections == 2
        await first.close()
        await second.close()
        with pytest.raises(TimeoutError):
            await sim.wait_connections(3, 0.01)


# --------------------------------------------------------------------------- shutdown


async def test_stop_closes_with_1000_server_shutting_down() -> None:
    sim = Simulator(options(sessions=1, chunk_delay=0.05, chunks_per_task=(50, 50)))
    await sim.start()
    ws = await open_client(sim)
    await sim.stop()
    closed = await expect_close(ws)
    assert isinstance(closed, ConnectionClosedOK)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "Server shutting down")
    await sim.stop()  # idempotent


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
async def test_serve_stops_cleanly_on_sigterm() -> None:
    ports: asyncio.Queue[int] = asyncio.Queue()
    runner = asyncio.create_task(serve(options(), ready=ports.put_nowait))
    async with asyncio.timeout(TIMEOUT):
        port = await ports.get()
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        assert await recv_text(ws) == HEALTH_CHECK_FRAME
        os.kill(os.getpid(), signal.SIGTERM)
        closed = await expect_close(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "Server shutting down")
    async with asyncio.timeout(TIMEOUT):
        await runner


# --------------------------------------------------------------------------- helpers


def test_iso_from_ms_matches_javascript() -> None:
    assert iso_from_ms(1795692537464) == "2026-11-26T11:28:57.464Z"
    assert iso_from_ms(0) == "1970-01-01T00:00:00.000Z"


def test_firehose_template_size() -> None:
    prefix, suffix = firehose_template("session_firehose_1_abcdefghi", 180, 1000)
    assert len(f"{prefix}999{suffix}") == 180
    frame = json.loads(f"{prefix}7{suffix}")
    assert frame["data"]["metadata"] == {"type": "text", "index": 7}
