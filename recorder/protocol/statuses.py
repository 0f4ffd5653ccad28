"""The session statuses the recorder reads: which end a session, and the rule "a
session is active", for Python and for SQL alike."""

from __future__ import annotations

TERMINAL_STATUSES = frozenset(
    {"completed", "failed", "stopped", "terminated", "cancelled", "canceled", "error", "unknown"}
)
# The terminal statuses as an SQL list, and the rule "a session is active" in SQL: it
# has a status that is not terminal; one never seen with a status (known only from its
# stream) is not. Written once, for both databases, the writer's queries and the readers'.
TERMINAL_SQL = "({})".format(", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)))
ACTIVE_SQL = f"status IS NOT NULL AND status NOT IN {TERMINAL_SQL}"
# Set on sessions the index believed active that a later sessions_list no longer names.
LOST_STATUS = "unknown"
