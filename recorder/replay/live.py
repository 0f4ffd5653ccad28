"""``recorder replay SESSION --against ws://…``: a recorded client's requests played again
against a live daemon (a new version, a new configuration), the answers recorded and
compared with the recorded ones: does the new daemon still fail this way?

**Sending.** In recorded order, on one connection dialled with the recorder's
credentials (:mod:`recorder.replay.steps` makes the plan). A request the client sent
after receiving replies waits until the new daemon has sent the last of them (not a
``stream_chunk``, whose count varies): the same kind, as many times (task completion
and failure are one kind); at most 30 s plus twice the daemon's recorded time, 5
minutes at most. Then it pauses for the client's recorded think time after that
reply; a request that waited for no reply, for the recorded time since the previous
request. Recorded times are monotonic within a connection; each pause is capped by
``pace.max_idle`` and divided by ``pace.speed`` (``pace.instant``: none). Waits for the
daemon are never scaled, and ``Pace``'s window (``--from``) does not apply: played from
its middle, a conversation would name sessions the daemon never made.

**Ids.** A session created by the conversation's ``spawn_session`` gets a new id,
learned as the UI learned it: from the first reply after our spawn that names a
session the daemon did not have before it (it is asked, ``list_sessions``, just before:
an earlier replay's session has the same orchestrator and task), with the spawn's
orchestrator and task description: a ``session_status_update`` (broadcast) or an entry of a
``sessions_list``; or from any frame only the requester gets (stream, tool call, task,
``session_spawned``). A request that names the session while its new id is still
unknown (the UI had it from ``list_sessions`` while the spawn ran; the daemon says
``session_spawned`` only after the first run) asks ``list_sessions`` as the UI did,
every quarter second, up to 30 s, and is then sent. Other ids a recorded reply named
before any request did (the daemon's; a client's, such as a task's text, are never
rewritten) are paired by position: the n-th reply of a kind. Substitution replaces
the exact JSON string ``"old"``, quotes included, by ``"new"`` in a text request;
nothing else changes (whitespace, key order, an id inside a longer string, binary).

**Ending.** After the last request: until the counterpart of the recorded last reply
(not a chunk) has come, then until nothing about the session has come for half a
second; or the daemon closes; at the latest after twice the recorded time from the
last request to the last reply plus 10 s, at most a minute. A daemon that sends more
than ten times the recorded replies and 1 000 (stream chunks aside) is flooding: the
replay stops there, and says so.

**Recording, comparing.** Recorded like a proxied conversation, with role ``replay``.
Compared (:mod:`recorder.replay.compare`): the recorded replies on the connections
that carried the requests, and the new ones that name the new session or are errors
(which name nothing, and can only answer our requests), with new ids in error texts
put back to the recorded ones. Where the replay could not keep the recorded order (a
reply it waited for never came; the id was not learnable in time) it is a hitch, and
what follows it is told apart from what the daemon did; the end that never came, or a
close before it, is a finding of the daemon's with its cause.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from recorder.addresses import redact_url
from recorder.capture.dial import describe_close
from recorder.config import Config
from recorder.pipeline.writer import KILL_WAIT, Writer, WriterError
from recorder.protocol.classify import classify
from recorder.protocol.frames import IN, OUT
from recorder.protocol.requests import LIST_SESSIONS
from recorder.replay.compare import Comparison, Hitch, Reply, compare, kind, summarise
from recorder.replay.daemon import LiveReplayError, check_url, dial
from recorder.replay.source import Conversation
from recorder.replay.steps import Plan, Slot, Step, announced, plan, substitute
from recorder.replay.timing import Pace
from recorder.times import now_us

__all__ = ["LiveReplayError", "Plan", "Step", "check_url", "plan", "replay_live", "substitute"]

ID_WAIT = 30.0
ID_ASK = 5.0  # for a sessions_list, before the spawn
REPLY_MARGIN, REPLY_MAX = 30.0, 300.0
END_MARGIN, END_MAX = 10.0, 60.0
SETTLE = 0.5
# Replies about the session (stream chunks aside) past which a daemon is flooding:
# this many times the recorded ones, and this many more.
FLOOD_TIMES, FLOOD_MORE = 10, 1000
# Every chunk's reply is this one tuple: a stream of millions holds a pointer each.
CHUNK: Reply = ("stream_chunk", None, None)
LIST_EVERY = 0.25  # between two list_sessions while an id is learned


class _Live:
    """The replayed conversation as it happens: the socket, what came back, the ids."""

    def __init__(self, the_plan: Plan, ws: Any, writer: Writer, cid: int, pace: Pace) -> None:
        self.plan, self.ws, self.writer, self.cid, self.pace = the_plan, ws, writer, cid, pace
        # Recorded id -> new id; a session no spawn of ours created keeps its id.
        self.ids: dict[str, str] = {} if the_plan.spawn else {the_plan.session: the_plan.session}
        self.seq = itertools.count(1)
        self.spawn_sent = self.closed = False
        self.counts: Counter[str] = Counter()
        self.replies: list[Reply] = []
        self.notes: list[str] = []
        self.hitches: list[Hitch] = []
        self.events: list[tuple[str, str]] = []
        # Sessions the daemon named before our spawn: none of them is the one it made.
        self.older: set[str] = set()
        self.lists = 0  # sessions_list replies received
        # The replies kept for the comparison (stream chunks aside), and how many at
        # most: past them the daemon floods.
        self.said = 0
        recorded = sum(f.type != "stream_chunk" for f in the_plan.replies)
        self.most = FLOOD_TIMES * recorded + FLOOD_MORE
        self.flooded = False
        self.changed = asyncio.Condition()

    @property
    def session(self) -> str | None:
        return self.ids.get(self.plan.session)

    async def record(self, direction: str, is_text: bool, data: bytes) -> None:
        frame = (self.cid, next(self.seq), direction, now_us(), time.monotonic_ns(), is_text, data)
        await self.writer.put(frame)

    def _is_ours(self, found: str, session: Any) -> bool:
        """Whether ``found``, a session a frame names, is the one our spawn made."""
        wanted = self.plan.spawn or (None, None)
        if found in self.older:
            return False
        return wanted in ((None, None), announced({"session": session}, "session"))

    def _listed(self, obj: dict[str, Any] | None) -> None:
        """Learn from a ``sessions_list``, as the UI did while the spawn ran."""
        sessions = obj.get("sessions") if obj else None
        if not isinstance(sessions, list):
            return
        self.lists += 1
        for entry in sessions:
            found = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(found, str):
                continue
            if not self.spawn_sent:
                self.older.add(found)
            elif self.session is None and self._is_ours(found, entry):
                self.ids[self.plan.session] = found

    def see(self, is_text: bool, data: bytes) -> None:
        """Take in a frame from the daemon: the ids it teaches, and whether it is one of
        the session's replies."""
        c = classify(data, is_text)
        if c.type == "sessions_list":
            self._listed(c.obj)
            return
        if c.session_id is None:
            ours = c.type == "error"
        elif not self.spawn_sent and self.session is None:
            self.older.add(c.session_id)
            ours = False
        elif self.session is None:
            # Only session_status_update is broadcast: any other frame naming a
            # session came to us alone, about the session our spawn made.
            ours = c.type != "session_status_update" or self._is_ours(
                c.session_id, (c.obj or {}).get("session")
            )
            if ours:
                self.ids[self.plan.session] = c.session_id
        else:
            ours = c.session_id == self.session
        if not ours:
            return
        k = kind(c.type)
        self.counts[k] += 1
        recorded = self.plan.slots.get((k, self.counts[k]), (None, None))
        for old, new in zip(recorded, (c.session_id, c.task_id), strict=True):
            # Only the daemon's ids: a client's (a task's text) is never rewritten.
            if old in self.plan.assigned and new is not None and old not in self.ids:
                self.ids[old] = new
        reply = summarise(is_text, data)
        self.said += reply != CHUNK
        self.replies.append(CHUNK if reply == CHUNK else reply)

    def has(self, slot: Slot | None) -> bool:
        return slot is None or self.counts[slot[0]] >= slot[1] or self.closed

    async def until(self, check: Callable[[], bool], seconds: float) -> bool:
        """Wait for ``check()`` (re-checked on every frame) up to ``seconds``."""
        try:
            async with asyncio.timeout(max(seconds, 0.0)), self.changed:
                await self.changed.wait_for(lambda: check() or self.closed)
        except TimeoutError:
            return False
        return check()

    async def receive(self) -> None:
        try:
            while self.said <= self.most:
                is_text, data = await self.ws.recv_raw()
                await self.record(IN, is_text, data)
                self.see(is_text, data)
                async with self.changed:
                    self.changed.notify_all()
            self.flooded = True
            self.events.append(("flood", f"the daemon sent more than {self.most} replies "
                                "about the session (stream chunks aside): the replay stopped "
                                "there, and recorded no more"))  # fmt: skip
            self.closed = True
            async with self.changed:
                self.changed.notify_all()
            while True:  # read on, unkept, for the close handshake to get through
                await self.ws.recv_raw()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            async with self.changed:
                self.changed.notify_all()

    async def send(self, is_text: bool, data: bytes) -> bool:
        """Send and record a frame; False when the daemon has closed."""
        if self.closed:
            return False
        try:
            await self.ws.send_many([(is_text, data)])
        except ConnectionClosed:
            return False
        await self.record(OUT, is_text, data)
        return True

    def hitch(self, number: int, step: Step, what: str) -> None:
        text = f"request {number} ({step.frame.type or 'not JSON'}): {what}"
        self.hitches.append(Hitch(text, step.before, len(self.replies)))

    async def learn_id(self, number: int, step: Step) -> None:
        """Ask ``list_sessions`` until a reply names the session our spawn made."""
        loop = asyncio.get_running_loop()
        deadline, asked = loop.time() + ID_WAIT, 0
        while self.session is None and not self.closed and loop.time() < deadline:
            seen = self.lists
            if not await self.send(True, LIST_SESSIONS.encode()):
                return
            asked += 1
            answered = functools.partial(lambda n: self.session is not None or self.lists > n, seen)
            await self.until(answered, deadline - loop.time())
            if self.session is None:
                await self.until(lambda: self.session is not None, LIST_EVERY)
        if self.session is None and not self.closed:
            self.hitch(number, step, f"names the session, whose new id no reply named within "
                       f"{ID_WAIT:.0f} s ({asked} list_sessions asked); sent with the recorded id")  # fmt: skip

    async def send_all(self) -> tuple[int, str]:
        """Send each request when its time comes; (how many were sent, how it ended)."""
        loop = asyncio.get_running_loop()
        previous = loop.time()
        for sent, step in enumerate(self.plan.steps):
            start, awaited = previous, step.awaited
            if awaited is not None:
                wait = min(REPLY_MARGIN + 2 * step.daemon_time, REPLY_MAX)
                if await self.until(functools.partial(self.has, awaited), wait):
                    start = loop.time()
                elif not self.closed:
                    self.hitch(sent + 1, step, f"was sent after reply {awaited[0]} #{awaited[1]} "
                               f"in the recording; it did not come within {wait:.0f} s: sent anyway")  # fmt: skip
            await asyncio.sleep(max(start + _pause(step.pause, self.pace) - loop.time(), 0.0))
            is_text, data = step.frame.is_text, step.frame.data
            if step.frame.type == "spawn_session" and not self.spawn_sent and self.plan.spawn:
                seen = self.lists  # the sessions the daemon has: none is the one it makes
                if await self.send(True, LIST_SESSIONS.encode()):
                    await self.until(functools.partial(lambda n: self.lists > n, seen), ID_ASK)
            if is_text and self.plan.session.encode() in data and self.session is None:
                await self.learn_id(sent + 1, step)
            if is_text:
                data = substitute(data, {o: n for o, n in self.ids.items() if o != n})
            # Set first: the daemon may announce the session before send() returns.
            spawned = self.spawn_sent
            self.spawn_sent = spawned or step.frame.type == "spawn_session"
            if not await self.send(is_text, data):
                self.spawn_sent = spawned
                return sent, "closed"
            previous = loop.time()
        return len(self.plan.steps), await self.finish()

    async def finish(self) -> str:
        """Read on until the conversation has ended the way the recorded one did."""
        loop = asyncio.get_running_loop()
        wait = min(END_MARGIN + 2 * self.plan.tail, END_MAX)
        deadline = loop.time() + wait
        last = self.plan.last
        await self.until(lambda: self.has(last), wait)
        if last is not None and self.counts[last[0]] < last[1]:
            if self.closed:
                return "closed"
            (k, n), replies = last, len(self.plan.replies)
            self.events.append(("timeout", f"the recorded last reply ({k} #{n}, reply {replies}) "
                                f"did not come within {wait:.0f} s of the last request"))  # fmt: skip
            return "timeout"
        # Then anything more about the session, until it has been quiet for a while.
        seen = -1
        while not self.closed and loop.time() < deadline and seen < len(self.replies):
            seen = len(self.replies)
            more = functools.partial(lambda n: len(self.replies) > n, seen)
            await self.until(more, min(SETTLE, deadline - loop.time()))
        return "ended as recorded, then closed" if self.closed else "as recorded"

    def comparison(self, sent: int, ended: str, close: tuple[int | None, str | None]) -> Comparison:
        steps, (code, reason) = len(self.plan.steps), close
        said = f"{code} {reason}" if reason else f"{code}"
        if ended == "closed" and not self.flooded:
            self.events.append(("closed", f"the daemon closed the connection ({said}) after "
                                f"{sent} of {steps} requests, before the recorded end"))  # fmt: skip
        elif ended.endswith("then closed"):
            self.notes.append(f"the daemon closed the connection ({said}) after the recorded end")
        changed = {o: n for o, n in self.ids.items() if o != n}
        recorded = [summarise(f.is_text, f.data) for f in self.plan.replies]
        replayed = [(t, st, _ids_back(err, changed)) for t, st, err in self.replies]
        details = {"session": {"recorded": self.plan.session, "replayed": self.session},
                   "substituted": changed, "connection_id": self.cid,
                   "requests": {"recorded": steps, "sent": sent}, "ended": ended}  # fmt: skip
        return compare(recorded, replayed, notes=self.notes, details=details,
                       hitches=self.hitches, events=self.events)  # fmt: skip


def _ids_back(text: str | None, ids: dict[str, str]) -> str | None:
    """An error text with the new ids put back to the recorded ones."""
    for old, new in ids.items():
        text = text.replace(new, old) if text is not None else None
    return text


def _pause(seconds: float, pace: Pace) -> float:
    capped = min(seconds, pace.max_idle) if pace.max_idle is not None else seconds
    return 0.0 if pace.instant else max(capped, 0.0) / pace.speed


async def replay_live(
    config: Config, url: str, recorded: Conversation, *, pace: Pace | None = None
) -> Comparison:
    """Play ``recorded``'s requests against the daemon at ``url``; record and compare."""
    check_url(url)  # before the writer, which migrates the database
    s, log = config.storage, config.log
    # storage.instance, as the service passes it: in a database that several
    # recorders share, the replay's connection is filed under this recorder.
    writer = Writer(s.url, batch_size=s.batch_size, commit_interval=s.commit_interval,
                    queue_max_frames=s.queue_max_frames, queue_max_bytes=s.queue_max_bytes,
                    log_level=log.level, log_format=log.format, instance=s.instance)  # fmt: skip
    try:
        await writer.start()
    except WriterError as exc:
        raise LiveReplayError(str(exc)) from None
    running = asyncio.create_task(writer.run(), name="replay-writer")
    try:
        ws = await dial(config, url)
        cid = await writer.open_connection("replay", redact_url(url), None)
        live = _Live(plan(recorded), ws, writer, cid, pace or Pace())
        reader = asyncio.create_task(live.receive(), name="replay-receive")
        sent, ended = 0, "closed"
        try:
            sent, ended = await live.send_all()
        finally:
            await ws.close()
            # A writer that cannot commit (a full disk: it retries, as the recorder
            # does) holds the reader and the close: the replay ends anyway, and says so.
            async with asyncio.timeout(s.shutdown_timeout) as drain:
                await asyncio.gather(reader, return_exceptions=True)
                code, reason, closed_by = describe_close(ws, "replay ended")
                await writer.close_connection(cid, code=code, reason=reason, closed_by=closed_by)
        return live.comparison(sent, ended, (code, reason))
    except TimeoutError:
        if not drain.expired():
            raise
        raise LiveReplayError(
            f"the database did not take the replay's frames within {s.shutdown_timeout:g} s "
            "(storage.shutdown_timeout): a full disk, or writes it refuses (see the log)"
        ) from None
    finally:
        writer.stop()
        done, _ = await asyncio.wait((running,), timeout=s.shutdown_timeout)
        if not done:
            writer.kill_and_wait()  # nothing more can be committed; the run sees it gone
            await asyncio.wait((running,), timeout=KILL_WAIT)
        await writer.close()
        if done:
            await running  # a writer that died says so, as it always did
        elif running.done() and not running.cancelled():
            running.exception()  # it died of the kill: the reason is said above
