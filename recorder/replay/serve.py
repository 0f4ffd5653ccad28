"""``recorder replay SESSION --serve HOST:PORT``: a recorded session played to a real
client by a server that stands in for the daemon.

Point a UI at it (``NEXT_PUBLIC_DAEMON_WS_URL=ws://127.0.0.1:8790``) and it sees what
the recorded UI saw: the daemon's hello, then the session's daemon-to-client frames,
byte-exact (text as text, binary as binary), in order, with their recorded pauses
(``--speed``, ``--max-idle``, ``--instant``). Meanwhile requests are answered as the
daemon would, from the recording: ``ping``; ``daemon_status`` (the last recorded
status); ``session_status`` and ``list_sessions`` (the session as the replay has shown
it so far). Malformed requests and unknown types get the daemon's "Invalid message
format". Requests that would make the daemon act (spawn, execute, stop) get no
answer of their own: what happens is what the recording says.

Who gets the replay:

- ``loop``: every client, each its own, from the start.
- Otherwise the replay is played through once. It goes to the first client; if that
  client leaves before the end, the next client to connect gets it from the start (a
  page reload, or React's double mount in development, must not lose it). Clients
  that connect while it is playing, and every client after it has played through, get
  the hello and answers as of the replay's point, like a second UI on the same daemon.

``wait_for_client``: every recorded request is a gate in the replay's timeline; the
replies recorded after it wait until this client has sent a request that matches it
(the same type and ids, :mod:`recorder.replay.matching`), and the server logs, once
per gate, which request it waits for. Each request the client sends claims the
earliest unclaimed recorded request it matches, so a client that asks early does not
stall the replay later; replies recorded before the first request play at once.
Queries are answered at once as well as claiming, so a recorded query's reply also
plays when its gate is reached, as a daemon's broadcast duplicates a reply.

``GET /health`` answers like the daemon's. With a token, clients present it as the
proxy's clients do (``Authorization: Bearer`` or ``?token=``), else get 401 and JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from recorder.capture.admission import admit
from recorder.capture.dial import close_within
from recorder.capture.handshake import USER_AGENT, json_response
from recorder.db.readonly import ReadError
from recorder.protocol.daemon import (
    HEALTH_CHECK_FRAME,
    INVALID_FORMAT,
    PONG_FRAME,
    dumps,
    error_frame,
)
from recorder.protocol.frames import IN
from recorder.replay.plan import Cue, ReplayFrame, Timeline
from recorder.replay.playback import Playback, Wire, parse_request
from recorder.replay.source import Session
from recorder.replay.timing import Due, Pace, Pacer

log = logging.getLogger("recorder.replay.serve")

# Answered from the recording, at once.
QUERIES = frozenset({"ping", "daemon_status", "list_sessions", "session_status"})
# Known to the daemon, answered by the recording only (its replies after them).
ACTIONS = frozenset({"spawn_session", "execute_task", "stop_session"})
NO_DAEMON_STATUS = "No daemon status in this recording"
CLOSE_TIMEOUT = 2.0
# Clients served at once: each holds a page and the page read ahead (a few MiB) while
# it plays; more are refused with 429, as the daemon refuses past its limit.
MAX_CLIENTS = 8


class Recorded(Protocol):
    """What a :class:`ReplayServer` plays: a session's recorded conversation, read as
    it plays (:class:`~recorder.replay.source.Stream`), or whole in memory
    (:class:`~recorder.replay.source.Conversation`)."""

    @property
    def session(self) -> Session: ...

    @property
    def greeting(self) -> ReplayFrame | None:
        """The hello a client gets first (None: the daemon's own)."""
        ...

    @property
    def daemon_status(self) -> ReplayFrame | None: ...

    def request_keys(self) -> list[tuple[int, bytes]]:
        """Each recorded request's id and key (``--wait-for-client``)."""
        ...

    async def read_page(self, after: int, requests: bool) -> tuple[list[ReplayFrame], int | None]:
        """The played frames after id ``after`` (with the requests, if asked), and the
        id to read on after (None: no more)."""
        ...


class ReplayServer:
    """A daemon that plays a recorded :class:`Conversation` (see the module docstring)."""

    def __init__(
        self,
        recorded: Recorded,
        *,
        pace: Pace,
        wait_for_client: bool = False,
        loop: bool = False,
        token: str | None = None,
    ) -> None:
        self.recorded = recorded
        self.pace = pace
        self.wait_for_client = wait_for_client
        self.loop = loop
        self.token = token
        self.port: int | None = None
        # A session only a link saw may have no hello of its own (its first frame is
        # then one of the replies, which must not be played twice): the daemon's.
        hello = recorded.greeting
        self.hello: Wire = (
            (True, HEALTH_CHECK_FRAME.encode()) if hello is None else (hello.is_text, hello.data)
        )
        keyed = recorded.request_keys() if wait_for_client else []
        self._gates = {fid: i for i, (fid, _) in enumerate(keyed)}
        self._keys = [key for _, key in keyed]
        self._current: Playback | None = None  # the replay answers come from
        self._busy = False  # without loop: the replay is being played to a client
        self._started = time.monotonic()
        self._clients: set[ServerConnection] = set()

    async def run(
        self, host: str, port: int, *, ready: Callable[[int], None] | None = None
    ) -> None:
        """Serve until cancelled; ``ready(port)`` once listening."""
        self._started = time.monotonic()
        async with serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            # Frames go out as recorded; the daemon does not compress either.
            compression=None,
            # Ctrl-C closes every client; one that stopped reading (a full queue
            # holds back our close frame) must not keep the command waiting long.
            close_timeout=CLOSE_TIMEOUT,
            server_header=USER_AGENT,
        ) as server:
            self.port = int(server.sockets[0].getsockname()[1])
            if ready is not None:
                ready(self.port)
            try:
                # Not serve_forever(): cancelled, asyncio's waits for every connection
                # to end before this finally could close them.
                await asyncio.get_running_loop().create_future()
            finally:
                # Each client closed within CLOSE_TIMEOUT, at once when it is not
                # reading (websockets' own close waits for its buffer to drain first,
                # and the stop waited for its keepalive to give up: 17 s).
                await asyncio.gather(
                    *(
                        close_within(ws, 1001, "replay stopped", CLOSE_TIMEOUT)
                        for ws in self._clients
                    ),
                    return_exceptions=True,
                )

    # --- handshake ----------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        upgrade = any("websocket" in v.lower() for v in request.headers.get_all("Upgrade"))
        if target.path == "/health" and not upgrade:
            view = self._current
            uptime = int((time.monotonic() - self._started) * 1000)
            active = view.active if view is not None else 0
            return json_response(
                200, {"status": "healthy", "uptime": uptime, "activeSessions": active}
            )
        if not upgrade:
            return None  # websockets answers 426
        if len(self._clients) >= MAX_CLIENTS:
            return json_response(429, {"error": "connection_limit_exceeded"})
        query = parse_qsl(target.query, keep_blank_values=True)
        admission = admit(self.token, request.headers, query)
        if admission.reject is not None:
            status, error = admission.reject
            log.warning("replay client rejected: %s", error)
            return json_response(status, {"error": error})
        return None

    # --- one client ---------------------------------------------------------------

    def _take(self) -> Playback | None:
        """A replay of its own for a new client, or None (see the module docstring)."""
        if not self.loop and (self._busy or (self._current and self._current.finished)):
            return None
        self._busy = True
        self._current = Playback(self._keys)
        return self._current

    async def _handle(self, ws: ServerConnection) -> None:
        playback = self._take()
        player: asyncio.Task[None] | None = None
        self._clients.add(ws)
        try:
            await ws.send(self.hello[1], text=self.hello[0])
            if playback is not None:
                player = asyncio.create_task(self._play(ws, playback))
            async for message in ws:
                await self._answer(ws, message, playback)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(ws)
            if player is not None:
                player.cancel()
                await asyncio.wait([player])
                if not player.cancelled() and (exc := player.exception()) is not None:
                    log.error("replay failed", exc_info=exc)
            if playback is not None and not playback.finished:
                self._busy = False  # played to nobody to the end: the next client gets it

    async def _pages(self) -> AsyncGenerator[list[ReplayFrame], None]:
        """The frames played (and the recorded requests, as gates, when waiting for
        the client), a page at a time, the next page read while this one plays."""
        gates = self.wait_for_client
        ahead = asyncio.ensure_future(self.recorded.read_page(0, gates))
        try:
            while True:
                page, after = await ahead
                if after is not None:
                    ahead = asyncio.ensure_future(self.recorded.read_page(after, gates))
                yield page
                if after is None:
                    return
        finally:
            if not ahead.cancel():
                ahead.exception()  # a read that failed as the player stopped: seen

    async def _play(self, ws: ServerConnection, playback: Playback) -> None:
        clock = asyncio.get_running_loop()
        # Requests join the timeline as gates (with wait_for_client), so that a reply's
        # pause after its gate is the daemon's recorded latency, not the recorded
        # user's think time.
        line = Timeline(self.recorded.session.gaps)
        pacer = Pacer(self.pace)
        due = Due(clock.time())
        try:
            async with contextlib.aclosing(self._pages()) as pages:
                async for page in pages:
                    for frame in page:
                        for cue in line.add(frame):
                            await self._cue(ws, playback, pacer, due, cue)
                        if pacer.past:
                            break
                    if pacer.past:
                        break
                else:
                    for cue in line.end():
                        await self._cue(ws, playback, pacer, due, cue)
            playback.finished = True
        except ConnectionClosed:
            pass
        except ReadError as exc:
            log.error("replay stopped: %s", exc)
            await ws.close(1011, "the recording could not be read")

    async def _cue(
        self, ws: ServerConnection, playback: Playback, pacer: Pacer, due: Due, cue: Cue
    ) -> None:
        clock = asyncio.get_running_loop()
        pause = pacer.pause(cue)
        frame = cue.frame
        if pause is None:  # before the window (the sessions it shows still count), or past it
            if frame is not None and frame.direction == IN and not pacer.past:
                playback.saw(frame)
            return
        if frame is None:  # a gap: its silence is part of the next pause
            due.wait(pause, clock.time())
            return
        if frame.direction != IN:  # a recorded request: wait for the client's
            await playback.claimed(self._gates[frame.id], frame)
            due.restart(clock.time())
            return
        # Sleeps at least a tick, so a client's requests are answered promptly even
        # during an --instant replay.
        await asyncio.sleep(due.wait(pause, clock.time()))
        playback.saw(frame)
        await ws.send(frame.data, text=frame.is_text)

    async def _answer(
        self, ws: ServerConnection, message: str | bytes, playback: Playback | None
    ) -> None:
        # A binary frame is no request to the daemon, whatever it holds.
        request = parse_request(message) if isinstance(message, str) else None
        kind = request.get("type") if request is not None else None
        claimed = self.wait_for_client and playback is not None and playback.claim(message)
        if claimed and kind not in QUERIES:
            return  # the recorded replies after it answer it
        if request is None or (kind not in QUERIES and kind not in ACTIONS):
            await ws.send(error_frame(INVALID_FORMAT))
            return
        view = playback or self._current
        sessions = view.sessions if view is not None else {}
        payload = request.get("payload")
        if kind == "ping":
            await ws.send(PONG_FRAME)
        elif kind == "daemon_status":
            status = self.recorded.daemon_status
            if status is None:
                await ws.send(error_frame(NO_DAEMON_STATUS))
            else:
                await ws.send(status.data, text=status.is_text)
        elif kind == "list_sessions":
            shown = [session for session, _ in sessions.values()]
            await ws.send(dumps({"type": "sessions_list", "sessions": shown}))
        elif kind == "session_status":
            sid = payload.get("sessionId") if isinstance(payload, dict) else None
            if not isinstance(sid, str):
                await ws.send(error_frame(INVALID_FORMAT))
            elif sid in sessions:
                is_text, data = sessions[sid][1]
                await ws.send(data, text=is_text)
            else:
                await ws.send(error_frame(f"Session not found: {sid}"))
        # An action nobody recorded gets nothing: the replay is what happens.
