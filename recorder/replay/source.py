"""A session's replay read from the database in pages: it starts at once and its
memory stays flat whatever the session's length, and it holds no read snapshot
while it plays (:mod:`recorder.db.pages`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from recorder.db.pages import FrameFilter, frame_pages
from recorder.db.read import recording, recordings_around, resolve_session
from recorder.db.reader import Reader, Row
from recorder.protocol.frames import IN, OPCODE_TEXT
from recorder.protocol.index import TERMINAL_STATUSES
from recorder.protocol.story import Gap, Recording, gaps, span
from recorder.replay.plan import Choice, Cue, ReplayFrame, choose, timeline
from recorder.times import now_us

COLUMNS = (
    "id, connection_id, seq, direction, received_at_us, monotonic_ns, type, opcode, size, "
    "session_id, task_id, payload, payload_bytes"
)
# How often --follow looks for frames committed since.
FOLLOW_POLL = 0.2


def replay_frame(row: Row) -> ReplayFrame:
    payload = row["payload"]
    data = payload.encode() if payload is not None else bytes(row["payload_bytes"] or b"")
    return ReplayFrame(
        row["id"],
        row["connection_id"],
        row["seq"],
        row["direction"],
        row["received_at_us"],
        row["monotonic_ns"],
        row["type"],
        row["opcode"] == OPCODE_TEXT,
        data,
        row,
    )


@dataclass
class Session:
    """What a replay needs to know about a session before its first frame."""

    row: Row
    recordings: list[Recording]
    choice: Choice
    gaps: list[Gap]
    # The connection that sent the session's spawn_session: --follow chooses again.
    creator: int | None = None

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def roles(self) -> dict[int, str]:
        return {r.id: r.role for r in self.recordings}


def open_session(reader: Reader, text: str, connection: int | None = None) -> Session:
    """The session ``text`` names (an id or its start), and the replay's plan for it."""
    row = resolve_session(reader, text)
    sid = row["id"]
    start, ended = span(row)
    now = now_us()
    end = ended if ended is not None else now
    recordings = recordings_around(reader, start, end)
    # Through the (type, id) index: one row per spawn ever, where the session's own
    # index would walk every frame of a long session. SQLite's unary + keeps it off
    # the session index; PostgreSQL's planner picks by statistics.
    session_term = "+session_id" if reader.dialect == "sqlite" else "session_id"
    creator = reader.rows(
        f"SELECT connection_id FROM frames WHERE type = 'spawn_session' AND {session_term} = :sid "
        "ORDER BY id LIMIT 1",
        {"sid": sid},
    )
    creator_id = creator[0]["connection_id"] if creator else None
    if connection is not None and connection not in {r.id for r in recordings}:
        recordings += [
            recording(r)
            for r in reader.rows("SELECT * FROM connections WHERE id = :id", {"id": connection})
        ]
    choice = choose(recordings, creator_id, start, end, now, only=connection)
    found = gaps(start, end, recordings, now) if connection is None else []
    return Session(row, recordings, choice, found, creator_id)


def _known(reader: Reader, roles: dict[int, str], frame: ReplayFrame) -> None:
    """Add the role of a connection outside the session's span (only when clocks
    disagree) to ``roles``."""
    if frame.connection_id not in roles:
        found = reader.rows(
            "SELECT role FROM connections WHERE id = :id", {"id": frame.connection_id}
        )
        roles[frame.connection_id] = found[0]["role"] if found else "?"


def _stale(session: Session, roles: dict[int, str], batch: list[ReplayFrame]) -> bool:
    """Whether ``batch`` may be played differently from how the session was planned:
    a connection opened since, or a link frame while a chosen conversation was still
    open (it may have closed since, and the link's frames are then the replay's)."""
    if session.choice.only is not None:
        return False  # one connection, whatever else opens or closes
    if any(f.connection_id not in roles for f in batch):
        return True
    open_chosen = any(
        r.closed_us is None for r in session.recordings if r.id in session.choice.conversations
    )
    return open_chosen and any(roles[f.connection_id] == "link" for f in batch)


def _replan(reader: Reader, session: Session) -> None:
    """Choose again, with the connections as they are now, as a replay started now
    would: a UI's reconnect joins the replay, another UI does not, and a conversation
    that closed no longer hides the link's frames."""
    start, _ = span(session.row)
    now = now_us()
    session.recordings = recordings_around(reader, start, now)
    session.choice = choose(session.recordings, session.creator, start, now, now)


def _pages(reader: Reader, session: Session, after: int = 0) -> Iterator[list[ReplayFrame]]:
    """The session's frames after id ``after``, all of them, a page at a time."""
    wanted = FrameFilter(session_id=session.id, after_id=after or None)
    for rows in frame_pages(reader, wanted, COLUMNS):
        yield [replay_frame(row) for row in rows]


def frames(reader: Reader, session: Session, *, follow: bool = False) -> Iterator[ReplayFrame]:
    """The frames the replay plays, in recording order; with ``follow``, then those
    committed later, until the session ends (or the caller stops)."""
    roles = session.roles
    last_id = 0
    for page in _pages(reader, session):
        for frame in page:
            last_id = frame.id
            _known(reader, roles, frame)
            if session.choice.plays(frame, roles):
                yield frame
    while follow:
        time.sleep(FOLLOW_POLL)
        new = False
        for page in _pages(reader, session, last_id):
            new = True
            if _stale(session, roles, page):
                _replan(reader, session)
                roles = session.roles
            for frame in page:
                last_id = frame.id
                _known(reader, roles, frame)
                if session.choice.plays(frame, roles):
                    yield frame
        status = reader.rows("SELECT status FROM sessions WHERE id = :sid", {"sid": session.id})
        if not new and status and status[0]["status"] in TERMINAL_STATUSES:
            return


def cues(reader: Reader, session: Session, *, follow: bool = False) -> Iterator[Cue]:
    return timeline(frames(reader, session, follow=follow), session.gaps)


@dataclass
class Conversation:
    """A session's recorded conversation, whole, for the serve and live modes: the
    frames the replay plays (daemon to client), and the requests the client sent on
    the connections played (client to daemon), each in recording order."""

    session: Session
    # The first frame the daemon sent on the played connection (its hello).
    hello: ReplayFrame | None
    replies: list[ReplayFrame]
    requests: list[ReplayFrame]
    # The last daemon_status_update recorded before or during the session.
    daemon_status: ReplayFrame | None


def conversation(reader: Reader, session: Session) -> Conversation:
    roles = session.roles
    choice = session.choice
    replies: list[ReplayFrame] = []
    requests: list[ReplayFrame] = []
    for frame in (f for page in _pages(reader, session) for f in page):
        if choice.plays(frame, roles):
            replies.append(frame)
        elif frame.direction != IN and (
            frame.connection_id in choice.conversations or frame.connection_id == choice.only
        ):
            requests.append(frame)
    played = sorted({f.connection_id for f in replies} | {f.connection_id for f in requests})
    first = choice.only or (min(choice.conversations) if choice.conversations else None)
    if first is None and played:
        first = played[0]
    hello = None
    if first is not None:
        rows = reader.rows(
            f"SELECT {COLUMNS} FROM frames WHERE connection_id = :cid AND direction = 'in' "
            "ORDER BY id LIMIT 1",
            {"cid": first},
        )
        hello = replay_frame(rows[0]) if rows else None
    until = replies[-1].id if replies else 0
    status_rows = reader.rows(
        f"SELECT {COLUMNS} FROM frames WHERE type = 'daemon_status_update' AND id <= :until "
        "ORDER BY id DESC LIMIT 1",
        {"until": until or 2**62},
    )
    status = replay_frame(status_rows[0]) if status_rows else None
    return Conversation(session, hello, replies, requests, status)
