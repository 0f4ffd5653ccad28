"""A session's replay read from the database in pages: it starts at once and its
memory stays flat whatever the session's length, and it holds no read snapshot
while it plays (:mod:`recorder.db.pages`)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recorder.db.follow import Follower
from recorder.db.pages import PAGE_ROWS
from recorder.db.recordings import FrameFilter, Recordings
from recorder.db.rows import Frame
from recorder.db.rows import Session as SessionRow
from recorder.protocol.frames import IN, OPCODE_TEXT, OUT
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.story import Gap, Recording, gaps, span
from recorder.replay.matching import request_key
from recorder.replay.plan import BROADCASTS, Choice, Cue, ReplayFrame, choose, timeline
from recorder.replay.took_part import TookPart, recorded_span
from recorder.times import now_us

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# How often --follow looks for frames committed since, and how long it goes on looking
# once the session has ended.
FOLLOW_POLL = 0.2
FOLLOW_SETTLE = 2.0


def replay_frame(row: Frame) -> ReplayFrame:
    return ReplayFrame(
        row.id,
        row.connection_id,
        row.seq,
        row.direction,
        row.received_at_us,
        row.monotonic_ns,
        row.type,
        row.opcode == OPCODE_TEXT,
        row.data,
        row,
    )


@dataclass
class Session:
    """What a replay needs to know about a session before its first frame."""

    row: SessionRow
    recordings: list[Recording]
    choice: Choice
    gaps: list[Gap]
    # The connection that sent the session's spawn_session: --follow chooses again.
    creator: int | None = None

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def roles(self) -> dict[int, str]:
        return {r.id: r.role for r in self.recordings}


def open_session(reader: Recordings, text: str, connection: int | None = None) -> Session:
    """The session ``text`` names (an id or its start), and the replay's plan for it."""
    row = reader.session(text)
    start, ended = span(vars(row))
    now = now_us()
    end = ended if ended is not None else now
    # The connections up while it was active, and while its frames were recorded: a
    # UI that reconnected to stop a session the daemon says had ended is its own.
    recorded = recorded_span(reader, row.id)
    around = (start, end) if recorded is None else (min(start, recorded[0]), max(end, recorded[1]))
    recordings = reader.recordings_around(*around)
    creator_id = reader.spawned_on(row.id)
    if connection is not None and connection not in {r.id for r in recordings}:
        recordings += reader.recordings_of([connection])
    took_part = TookPart(reader, row.id, recordings)
    choice = choose(recordings, creator_id, *around, now, only=connection, took_part=took_part)
    found = gaps(start, end, recordings, now) if connection is None else []
    return Session(row, recordings, choice, found, creator_id)


def _known(reader: Recordings, roles: dict[int, str], frame: ReplayFrame) -> None:
    """Add the role of a connection outside the session's span (only when clocks
    disagree) to ``roles``."""
    if frame.connection_id not in roles:
        roles[frame.connection_id] = reader.role(frame.connection_id) or "?"


def _stale(session: Session, roles: dict[int, str], batch: list[ReplayFrame]) -> bool:
    """Whether ``batch`` may be played differently from how the session was planned:
    a connection opened since, or a link frame while a chosen conversation was still
    open (it may have closed since, and the link's frames are then the replay's)."""
    if session.choice.only is not None:
        return False  # one connection, whatever else opens or closes
    if any(f.connection_id not in roles for f in batch):
        return True
    # A UI the replay does not play, in the conversation now: a reconnect that asked.
    chosen = session.choice.conversations
    if any(
        roles[f.connection_id] == "proxy"
        and f.connection_id not in chosen
        and (f.direction == OUT or f.type not in BROADCASTS)
        for f in batch
    ):
        return True
    open_chosen = any(
        r.closed_us is None for r in session.recordings if r.id in session.choice.conversations
    )
    return open_chosen and any(roles[f.connection_id] == "link" for f in batch)


def _replan(reader: Recordings, session: Session) -> None:
    """Choose again, with the connections as they are now, as a replay started now
    would: a UI's reconnect joins the replay, another UI does not, and a conversation
    that closed no longer hides the link's frames."""
    start, _ = span(vars(session.row))
    now = now_us()
    session.recordings = reader.recordings_around(start, now)
    took_part = TookPart(reader, session.id, session.recordings)
    args = (session.recordings, session.creator, start, now, now)
    session.choice = choose(*args, took_part=took_part)


def _pages(reader: Recordings, session: Session, after: int = 0) -> Iterator[list[ReplayFrame]]:
    """The session's frames after id ``after``, all of them, a page at a time."""
    wanted = FrameFilter(session_id=session.id, after_id=after or None)
    for page in reader.frame_pages(wanted):
        yield [replay_frame(frame) for frame in page]


def frames(reader: Recordings, session: Session, *, follow: bool = False) -> Iterator[ReplayFrame]:
    """The frames the replay shows (the daemon's it plays, and the requests of the
    conversations it plays), in recording order; with ``follow``, then those
    committed later, until the session has ended and nothing more came for
    :data:`FOLLOW_SETTLE` (a proxied UI's last frames may be committed after the link's
    copy of the end), or the caller stops."""
    roles = session.roles
    follower = Follower(reader, FrameFilter(session_id=session.id), 0)
    for page in _pages(reader, session):
        for frame in page:
            follower.printed(frame.id)
            follower.seen = frame.id
            _known(reader, roles, frame)
            if session.choice.tells(frame, roles):
                yield frame
    quiet_since = time.monotonic()
    while follow:
        time.sleep(FOLLOW_POLL)
        page = [replay_frame(frame) for frame in follower.new()]
        if not page:
            ended = reader.session_status(session.id) in TERMINAL_STATUSES
            if ended and time.monotonic() - quiet_since >= FOLLOW_SETTLE:
                return
            continue
        quiet_since = time.monotonic()
        if _stale(session, roles, page):
            _replan(reader, session)
            roles = session.roles
        for frame in page:
            _known(reader, roles, frame)
            if session.choice.tells(frame, roles):
                yield frame


def cues(reader: Recordings, session: Session, *, follow: bool = False) -> Iterator[Cue]:
    return timeline(frames(reader, session, follow=follow), session.gaps)


@dataclass
class Conversation:
    """A session's recorded conversation, whole, for the live mode (and tests): the
    frames the replay plays (daemon to client), and the requests the client sent on
    the connections played (client to daemon), each in recording order."""

    session: Session
    # The first frame the daemon sent on the played connection (its hello).
    hello: ReplayFrame | None
    replies: list[ReplayFrame]
    requests: list[ReplayFrame]
    # The last daemon_status_update recorded before or during the session.
    daemon_status: ReplayFrame | None
    _merged: list[ReplayFrame] = field(default_factory=list, repr=False)

    @property
    def greeting(self) -> ReplayFrame | None:
        """The hello to send, unless it is one of the replies (a link's session)."""
        hello = self.hello
        return None if hello is None or any(f.id == hello.id for f in self.replies) else hello

    def request_keys(self) -> list[tuple[int, bytes]]:
        return [(f.id, request_key(f.data)) for f in self.requests]

    async def read_page(self, after: int, requests: bool) -> tuple[list[ReplayFrame], int | None]:
        """As :meth:`Stream.read_page`, from memory."""
        frames = self.replies
        if requests:
            if not self._merged:
                self._merged = sorted([*self.replies, *self.requests], key=lambda f: f.id)
            frames = self._merged
        at = bisect.bisect_right(frames, after, key=lambda f: f.id)
        page = frames[at : at + PAGE_ROWS]
        return page, (page[-1].id if at + PAGE_ROWS < len(frames) else None)


def conversation(reader: Recordings, session: Session) -> Conversation:
    roles = session.roles
    choice = session.choice
    replies: list[ReplayFrame] = []
    requests: list[ReplayFrame] = []
    for page in _pages(reader, session):
        for frame in page:
            if choice.plays(frame, roles):
                replies.append(frame)
            elif _is_request(session, frame):
                requests.append(frame)
    played = sorted({f.connection_id for f in replies} | {f.connection_id for f in requests})
    first = choice.only or (min(choice.conversations) if choice.conversations else None)
    if first is None and played:
        first = played[0]
    until = replies[-1].id if replies else 0
    hello = reader.first_in(first) if first is not None else None
    status = reader.daemon_status_before(until)
    return Conversation(
        session,
        replay_frame(hello) if hello else None,
        replies,
        requests,
        replay_frame(status) if status else None,
    )


def _is_request(session: Session, frame: ReplayFrame) -> bool:
    """A frame the client sent on a connection the replay plays."""
    choice = session.choice
    return frame.direction != IN and (choice.carries(frame) or frame.connection_id == choice.only)


class Stream:
    """A session's recorded conversation for ``--serve``, read from the database as it
    plays: a page at a time after a given id, by a player that reads one page ahead.
    What it holds at start is a few rows (the hello, the daemon's status); with
    ``requests``, the digest of each request the client sent, for
    ``--wait-for-client`` to match."""

    def __init__(self, reader: Recordings, session: Session, *, requests: bool = False) -> None:
        self.reader = reader
        # PostgreSQL's reader runs an event loop of its own, so it is read on a thread
        # (one: a reader is not shared). SQLite is read on the server's loop: a page
        # takes milliseconds, and a thread fought the loop for the GIL (a 1 M-frame
        # --instant replay took 27 s to play that way, against 18 s).
        self._thread: ThreadPoolExecutor | None = None
        if not reader.backend.reads_on_loop:
            from concurrent.futures import ThreadPoolExecutor

            self._thread = ThreadPoolExecutor(1)
        self.session = session
        self.roles = session.roles
        first = self._first_connection()
        found = reader.first_in(first) if first is not None else None
        hello = replay_frame(found) if found is not None else None
        self.greeting = None if hello is None or self._played(hello) else hello
        status = reader.daemon_status_before(reader.newest_frame_id(session.id))
        self.daemon_status = replay_frame(status) if status is not None else None
        self._requests = self._read_requests() if requests else []

    def _played(self, frame: ReplayFrame) -> bool:
        return frame.row.session_id == self.session.id and self.session.choice.plays(
            frame, self.roles
        )

    def _first_connection(self) -> int | None:
        """The connection whose hello a client gets: the played conversation's, else
        the connection of the first frame the replay plays."""
        choice = self.session.choice
        if choice.only or choice.conversations:
            return choice.only or min(choice.conversations)
        for page in _pages(self.reader, self.session):
            for frame in page:
                _known(self.reader, self.roles, frame)
                if choice.plays(frame, self.roles):
                    return frame.connection_id
        return None

    def _read_requests(self) -> list[tuple[int, bytes]]:
        wanted = FrameFilter(session_id=self.session.id, direction="out")
        found = []
        for page in self.reader.frame_pages(wanted):
            for frame in map(replay_frame, page):
                if _is_request(self.session, frame):
                    found.append((frame.id, request_key(frame.data)))
        return found

    def request_keys(self) -> list[tuple[int, bytes]]:
        return self._requests

    async def read_page(self, after: int, requests: bool) -> tuple[list[ReplayFrame], int | None]:
        """The frames after id ``after`` that the replay plays (and with ``requests``,
        the client's requests), at least one unless none is left; and the id to read
        on after, None at the end. Page by page, giving the loop its turn between two:
        a stretch of frames the replay does not play (150 000 polls of a UI) held every
        client's pings and handshakes for half a second."""
        import asyncio  # only a served replay (and its event loop) comes here

        loop = asyncio.get_running_loop()
        while True:
            if self._thread is None:
                played, last = self.page(after, requests)
            else:
                played, last = await loop.run_in_executor(self._thread, self.page, after, requests)
            if played or last is None:
                return played, last
            after = last
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)

    def page(self, after: int, requests: bool) -> tuple[list[ReplayFrame], int | None]:
        """One page of the session after id ``after``, in the caller's thread: the
        frames of it the replay plays (maybe none), and its last id (None: no more)."""
        for page in _pages(self.reader, self.session, after):
            played = []
            for frame in page:
                _known(self.reader, self.roles, frame)
                if self.session.choice.plays(frame, self.roles) or (
                    requests and _is_request(self.session, frame)
                ):
                    played.append(frame)
            return played, page[-1].id
        return [], None


def told_pages(
    reader: Recordings, session: Session, after: int = 0
) -> Iterator[tuple[list[ReplayFrame], int]]:
    """The session after id ``after``, a page read at a time: the frames of each page
    a text replay shows (as :func:`frames` without ``follow``: the daemon's played,
    and what was asked), maybe none, and the page's last id. A caller that stops
    early leaves no statement open."""
    roles = session.roles
    for page in _pages(reader, session, after):
        told = []
        for frame in page:
            _known(reader, roles, frame)
            if session.choice.tells(frame, roles):
                told.append(frame)
        yield told, page[-1].id
