"""What the read library reads of the cleanup: its runs, a service's answers to
`recorder cleanup run`, and what a dry run decides from. Part of
:class:`recorder.db.recordings.Recordings`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from recorder.db.readonly import Reader, first_row
from recorder.db.rows import CleanupRun
from recorder.protocol.policy import MatchState, SessionFacts


class CleanupReads:
    reader: Reader

    def cleanup_runs(
        self, *, ids: Iterable[int] | None = None, policy: str | None = None, limit: int = 0
    ) -> list[CleanupRun]:
        """Cleanup runs: those of ``ids`` in order, or the newest first (of ``policy``)."""
        if ids is not None:
            listed = ", ".join(str(int(i)) for i in ids) or "0"
            sql = f"SELECT * FROM cleanup_runs WHERE id IN ({listed}) ORDER BY id"
            return [CleanupRun.of(r) for r in self.reader.rows(sql)]
        where = " WHERE policy = :p" if policy else ""
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        sql = f"SELECT * FROM cleanup_runs{where} ORDER BY id DESC{limit_sql}"
        return [CleanupRun.of(r) for r in self.reader.rows(sql, {"p": policy})]

    def cleanup_answer(self, request_id: int) -> str | None:
        """A running service's answer to a `cleanup run` request (JSON), once given."""
        row = first_row(
            self.reader,
            "SELECT result FROM cleanup_requests WHERE id = :id AND done_us IS NOT NULL",
            {"id": request_id},
        )
        return None if row is None else str(row["result"])

    def decision_inputs(
        self, policy_names: Iterable[str], instance: str
    ) -> tuple[list[SessionFacts], frozenset[str], dict[str, dict[str, MatchState]]]:
        """What a dry run decides from, read without writing: the facts of the
        sessions ``instance`` recorded, the pinned ids, and per policy its matches."""
        # Filtered here, not in SQL: a copy made before migration 0007 has no instance
        # column, and all its sessions are then anyone's, as they were.
        facts = [
            SessionFacts.of(row)
            for row in self.reader.rows("SELECT * FROM sessions")
            if ("instance" not in row.keys() or row["instance"] == instance)
        ]
        pinned = frozenset(r["session_id"] for r in self.reader.rows("SELECT session_id FROM pins"))
        sql = "SELECT * FROM cleanup_matches WHERE policy = :p"
        matched = {
            name: {r["session_id"]: _match_state(r) for r in self.reader.rows(sql, {"p": name})}
            for name in policy_names
        }
        return facts, pinned, matched


def _match_state(row: Any) -> MatchState:
    keys = row.keys()  # a copy made before migration 0011 counts no stop requests
    return MatchState(
        row["first_matched_us"],
        row["attempts"] if "attempts" in keys else 0,
        row["retry_us"] if "retry_us" in keys else None,
    )
