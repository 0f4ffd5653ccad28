"""Which session a person means: the one id every command that takes a session
resolves what was typed to, through :class:`recorder.db.recordings.Recordings`."""

from __future__ import annotations

from dataclasses import replace

from recorder.db.pages import FrameFilter
from recorder.db.readonly import Reader, ReadError, first_row
from recorder.db.rows import Session
from recorder.protocol.tame import on_one_line

# The matches an ambiguous prefix lists; one more is read, to tell whether there are more.
LISTED = 5


class NoSuchSession(ReadError):
    """No session, or more than one, matches what the user typed."""


class SessionIds:
    reader: Reader

    def session(self, text: str) -> Session:
        """The session whose id is ``text`` or starts with it (exactly one must)."""
        found = self._matching(text)
        if not found:
            raise NoSuchSession(f"no recorded session matches {text!r} (see `recorder sessions`)")
        return found[0]

    def named(self, f: FrameFilter) -> FrameFilter:
        """``f`` with its session, typed as an id or the start of one, as the one id.
        Where no session matches, the id as typed: frames name sessions the daemon
        never had (a request about a missing one, and the error it got back)."""
        if f.session_id is None:
            return f
        found = self._matching(f.session_id)
        return replace(f, session_id=found[0].id) if found else f

    def _matching(self, text: str) -> list[Session]:
        """The session ``text`` names: its id, else the one id starting with it; none;
        NoSuchSession when several start with it."""
        exact = first_row(self.reader, "SELECT * FROM sessions WHERE id = :id", {"id": text})
        if exact is not None:
            return [Session.of(exact)]
        found = self.reader.rows(
            f"SELECT * FROM sessions WHERE {self.reader.backend.starts_with('id')} "
            f"ORDER BY id LIMIT {LISTED + 1}",
            {"prefix": text, "beyond": text + "\U0010ffff", "n": len(text)},
        )
        if len(found) > 1:
            names = ", ".join(on_one_line(row["id"]) for row in found[:LISTED])
            # ", ..." only where sessions were left out: else it sends people looking
            # for matches that are not there.
            more = ", ..." if len(found) > LISTED else ""
            raise NoSuchSession(f"{text!r} matches more than one session: {names}{more}")
        return [Session.of(row) for row in found]
