"""Database schema: one MetaData shared by the store, the migrations and the tests.

Times are integers, microseconds since the Unix epoch, UTC (columns ending in
``_us``): exact, portable between SQLite and PostgreSQL, cheap to insert and to
compare. Home Assistant's recorder moved to numeric timestamps for the same
reasons. The CLI renders them as ISO-8601.

Only portable types and constraints are used, so the same migrations run on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from recorder.protocol.statuses import ACTIVE_SQL

__all__ = [
    "active_session",
    "alert_deliveries",
    "alert_targets",
    "alerts",
    "cleanup_matches",
    "cleanup_requests",
    "cleanup_runs",
    "connections",
    "frame_days",
    "frames",
    "instances",
    "metadata",
    "otel_endpoints",
    "otel_exports",
    "pins",
    "retired_ids",
    "sessions",
    "tasks",
]

# Named constraints keep batch migrations on SQLite (which copy tables) deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL wants BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")


connections = Table(
    "connections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # "link": the recorder's own connection to the daemon; "proxy": a UI's
    # conversation relayed through the recorder (both halves under one id: frames
    # from the UI are "out", frames from the daemon "in").
    Column("role", String(16), nullable=False),
    # The upstream URL, credentials masked before they get here.
    Column("url", Text, nullable=False),
    # For proxied conversations: the UI's address.
    Column("client_addr", Text, nullable=True),
    Column("opened_at_us", BigInteger, nullable=False),
    Column("closed_at_us", BigInteger, nullable=True),
    Column("close_code", Integer, nullable=True),
    Column("close_reason", Text, nullable=True),
    # "local"/"remote" for the link; "client"/"upstream"/"recorder" for the proxy;
    # "service" when a previous run stopped without closing it.
    Column("closed_by", String(16), nullable=True),
    Column("error", Text, nullable=True),
    Column("frame_count", BigInteger, nullable=False, server_default="0"),
    # The recorder that recorded it (storage.instance): recorders sharing one
    # PostgreSQL database each close only their own rows after an unclean stop.
    Column("instance", Text, nullable=False, server_default="default"),
)

frames = Table(
    "frames",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("connection_id", Id, ForeignKey("connections.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    # "in": from the daemon (or from the upstream); "out": to it.
    Column("direction", String(3), nullable=False),
    Column("received_at_us", BigInteger, nullable=False),
    # time.monotonic_ns() of the recording process: replay timing within a connection.
    Column("monotonic_ns", BigInteger, nullable=False),
    Column("opcode", SmallInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("type", Text, nullable=True),
    Column("session_id", Text, nullable=True),
    Column("task_id", Text, nullable=True),
    # Null when the frame is a JSON object; otherwise why it is not
    # ("binary", "invalid_utf8", "invalid_json", "not_object", "too_deep").
    Column("parse_error", String(16), nullable=True),
    # Exactly one of these holds the frame: the text when it is a UTF-8 text frame
    # without NUL characters (PostgreSQL text cannot hold NUL), else the raw bytes.
    Column("payload", Text, nullable=True),
    Column("payload_bytes", LargeBinary, nullable=True),
    # PostgreSQL: block ranges (BRIN), since frames are written in time order
    # (migration 0009).
    Index(None, "received_at_us", postgresql_using="brin"),
)

# By type, for the rare types looked up (spawn_session, daemon_status_update,
# `recorder frames --type`). PostgreSQL leaves out stream_chunk, most of a firehose:
# those frames are dense, no lookup needs an index to find them, and the entry cost
# 11 % of the writer's time (migration 0008). SQLite keeps them: its planner can
# use a partial index only when the query's literal text implies its condition, and
# the readers bind the type as a parameter.
Index(
    None,
    frames.c.type,
    frames.c.id,
    postgresql_where=frames.c.type != "stream_chunk",
)

# Partial: many frames carry no session and most no task, and every index entry
# costs insert time (measured: each secondary index adds about 1 µs per frame).
# `session_id = ?` implies `IS NOT NULL`, so both databases use them for lookups.
for _column in (frames.c.session_id, frames.c.task_id):
    Index(
        None,
        _column,
        frames.c.id,
        sqlite_where=_column.is_not(None),
        postgresql_where=_column.is_not(None),
    )

sessions = Table(
    "sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("orchestrator_id", Text, nullable=True),
    Column("session_type", Text, nullable=True),
    Column("status", Text, nullable=True),
    Column("task_id", Text, nullable=True),
    Column("task_description", Text, nullable=True),
    Column("first_seen_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
    # From the daemon's startedAt/endedAt: shown, never what decides a deletion (a
    # daemon's clock may be anywhere).
    Column("started_at_us", BigInteger, nullable=True),
    Column("ended_at_us", BigInteger, nullable=True),
    Column("frame_count", BigInteger, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    # The recorder that recorded it (storage.instance): what a recorder does about
    # sessions (lost, asked after, cleaned up) touches only its own.
    Column("instance", Text, nullable=False, server_default="default"),
    # When the recorder recorded the session's final status, on its own clock: the
    # cleanup's ages come from this and first/last seen (migration 0011).
    Column("finished_us", BigInteger, nullable=True),
    # "purging" or "compacting" while a cleanup run is part-way through the session:
    # a run killed there leaves it, and `recorder show` says the session is partial.
    Column("cleanup_state", Text, nullable=True),
    # When, on the recorder's clock, the session last showed work: its output, its
    # tasks, a status that changed, a task given to it; not the recorder's own polls
    # and stops, nor replies that repeat what was known (recorder.protocol.index).
    # Cleanup's idle_for is measured from it (migration 0011).
    Column("active_us", BigInteger, nullable=True),
    Index(None, "last_seen_us"),
    Index(None, "first_seen_us"),
    Index(None, "status"),
)

# A session is active while it has a status that is not terminal (the rule, written
# once: recorder.protocol.statuses.ACTIVE_SQL); for the writer's queries on sessions.
active_session = text(ACTIVE_SQL)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("session_id", Text, nullable=False),
    # The daemon's taskId. Real daemons use the task text the client sent, so it is
    # only unique within a session.
    Column("task_id", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("status", Text, nullable=True),
    Column("first_seen_us", BigInteger, nullable=False),
    Column("last_seen_us", BigInteger, nullable=False),
    Column("started_at_us", BigInteger, nullable=True),
    Column("ended_at_us", BigInteger, nullable=True),
    Column("frame_count", BigInteger, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    UniqueConstraint("session_id", "task_id"),
    # `frames --task` takes the description a person remembers. PostgreSQL: by hash,
    # since a B-tree refuses a row over a third of a page, and task texts are
    # prompts of any length; the lookup is by equality (migration 0010).
    Index(None, "description", postgresql_using="hash"),
)

# Frames and bytes per UTC day, type and direction, kept by the writer in the same
# transaction as the frames: `recorder stats` reads this instead of every frame.
frame_days = Table(
    "frame_days",
    metadata,
    Column("day_us", BigInteger, primary_key=True),
    # "" for frames without a type (not JSON objects, binary).
    Column("type", Text, primary_key=True),
    Column("direction", String(3), primary_key=True),
    Column("frames", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

# --- cleanup ----------------------------------------------------------------------

# Sessions no cleanup policy may touch (`recorder pin`).
pins = Table(
    "pins",
    metadata,
    Column("session_id", Text, primary_key=True),
    Column("pinned_at_us", BigInteger, nullable=False),
)

# When each policy first matched each session: the grace window runs from here.
cleanup_matches = Table(
    "cleanup_matches",
    metadata,
    Column("policy", Text, primary_key=True),
    Column("session_id", Text, primary_key=True),
    Column("first_matched_us", BigInteger, nullable=False),
    # stop_session: requests sent while the session went on matching (the daemon did
    # not act on them), and when the next may go; past a few, the policy gives up.
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retry_us", BigInteger, nullable=True),
)

# The audit trail: one row per run of a policy.
cleanup_runs = Table(
    "cleanup_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("policy", Text, nullable=False),
    Column("action", String(16), nullable=False),
    # "schedule", or "request" (`recorder cleanup run` through a running service),
    # or "cli" (run on the database directly, no service running).
    Column("trigger", String(16), nullable=False),
    Column("dry_run", SmallInteger, nullable=False),
    Column("started_us", BigInteger, nullable=False),
    # While it runs: the time of its last step. Written when the run starts, so a run
    # killed part-way leaves a trace (state "interrupted") of what it had done.
    Column("ended_us", BigInteger, nullable=False),
    # "running", "done" or "interrupted" (the recorder stopped under it).
    Column("state", String(16), nullable=False, server_default="done"),
    Column("matched", Integer, nullable=False),
    Column("acted", Integer, nullable=False),
    # Frames deleted or compacted, counted in the same transaction as each step.
    Column("frames", BigInteger, nullable=False, server_default="0"),
    # JSON: [{"session": id, "result": "..."}], what was done (or would be) to each.
    Column("actions", Text, nullable=False),
    Column("error", Text, nullable=True),
    # The recorder that ran it (storage.instance).
    Column("instance", Text, nullable=False, server_default="default"),
    Index(None, "started_us"),
)

# `recorder cleanup run` asking a running service: taken and answered by the service.
cleanup_requests = Table(
    "cleanup_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Empty: every enabled policy.
    Column("policy", Text, nullable=True),
    Column("dry_run", SmallInteger, nullable=False),
    Column("requested_us", BigInteger, nullable=False),
    Column("taken_us", BigInteger, nullable=True),
    Column("done_us", BigInteger, nullable=True),
    # JSON list of cleanup_runs ids, or the reason it could not run.
    Column("result", Text, nullable=True),
    # The recorder asked (storage.instance of the CLI's configuration): only it takes it.
    Column("instance", Text, nullable=False, server_default="default"),
)


# SQLite: the highest id deleted from a table (frames, connections), which no new
# row may take again (recorder.db.retired): readers follow frames by id.
retired_ids = Table(
    "retired_ids",
    metadata,
    Column("table_name", Text, primary_key=True),
    Column("highest", BigInteger, nullable=False),
)


# Each recorder (storage.instance) and what it last said about itself: `recorder
# status` reads it (whether the recorder is running comes from its lock).
instances = Table(
    "instances",
    metadata,
    Column("name", Text, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("host", Text, nullable=False),
    Column("started_us", BigInteger, nullable=False),
    Column("heartbeat_us", BigInteger, nullable=False),
    # JSON: the link's state, its last error, the proxy's clients, frames recorded.
    Column("state", Text, nullable=False),
)


# --- alerts -----------------------------------------------------------------------

# The outbox: every alert the rules raise, written before anything is sent (migration
# 0012). (rule, subject, occurrence, kind) is the dedupe key: the same alert raised
# again, after a restart too, is this row, and is not sent again.
alerts = Table(
    "alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # The recorder that raised it (storage.instance).
    Column("instance", Text, nullable=False, server_default="default"),
    Column("rule", Text, nullable=False),
    # "alert", or "resolved": a condition that ended.
    Column("kind", String(16), nullable=False),
    # The session id, else what the rule watches ("connection 3", "type T", a condition).
    Column("subject", Text, nullable=False),
    # Tells repeats apart: "once", or the repeat window, or when the condition began.
    Column("occurrence", Text, nullable=False),
    # What happened in a few words, and the matched text: one line, shortened, escaped.
    Column("what", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("session_id", Text, nullable=True),
    # When it happened (the frame's receive time, or the evaluation's), and the frame.
    Column("at_us", BigInteger, nullable=False),
    Column("connection_id", BigInteger, nullable=True),
    Column("seq", BigInteger, nullable=True),
    # When it was stored, on the recorder's clock: `recorder alerts --since` reads it.
    Column("raised_us", BigInteger, nullable=False),
    UniqueConstraint("rule", "subject", "occurrence", "kind"),
    Index(None, "raised_us"),
    # A purged session takes its delivered alerts with it (recorder.db.cleanup.forget).
    Index(None, "session_id"),
)

# Each alert's delivery to each of its targets (by name, as in [alerts.targets]): a
# row per pair, until it is delivered, retried with backoff at next_us.
alert_targets = Table(
    "alert_targets",
    metadata,
    Column("alert_id", Id, ForeignKey("alerts.id"), primary_key=True),
    Column("target", Text, primary_key=True),
    Column("done", SmallInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # When the next attempt is due; null once delivered, so that the index below holds
    # only the pending pairs.
    Column("next_us", BigInteger, nullable=True),
    # The target's last answer, one line, its URL masked.
    Column("last_answer", Text, nullable=True),
)

# Pending and due, oldest first (the deliverer's one read). Partial: delivered pairs,
# nearly all of them, stay out; `next_us <= ?` implies `IS NOT NULL` on both databases.
Index(
    None,
    alert_targets.c.next_us,
    sqlite_where=alert_targets.c.next_us.is_not(None),
    postgresql_where=alert_targets.c.next_us.is_not(None),
)

# Every attempt to deliver an alert to a target, and what the target answered.
alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("alert_id", Id, ForeignKey("alerts.id"), nullable=False),
    Column("target", Text, nullable=False),
    # 1 for the first attempt at this (alert, target).
    Column("attempt", Integer, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("ok", SmallInteger, nullable=False),
    Column("answer", Text, nullable=False),
    Index(None, "alert_id", "id"),
)

# --- the OpenTelemetry live export ---------------------------------------------------

# Sessions that reach a final status, or go idle, in order of when they did: the live
# export's read (recorder.db.export_reads) walks these from its cursor (migration 0013).
# The unfinished ones by last_seen_us, apart: finished sessions, nearly all of them,
# stay out. `x > ?` implies `x IS NOT NULL` on both databases.
Index(
    None,
    sessions.c.finished_us,
    sqlite_where=sessions.c.finished_us.is_not(None),
    postgresql_where=sessions.c.finished_us.is_not(None),
)
Index(
    "ix_sessions_last_seen_us_unfinished",
    sessions.c.last_seen_us,
    sqlite_where=sessions.c.finished_us.is_(None),
    postgresql_where=sessions.c.finished_us.is_(None),
)

# Each endpoint the live export sends to, by a hash of its traces URL (never the
# headers), and since when: what was recorded before is the backfill's.
otel_endpoints = Table(
    "otel_endpoints",
    metadata,
    Column("endpoint_key", Text, primary_key=True),
    Column("since_us", BigInteger, nullable=False),
)

# The export cursor: each session sent to an endpoint, once its send was answered.
# due_us is when the session became due (its final status, else its last sighting):
# the newest one is where the next look starts.
otel_exports = Table(
    "otel_exports",
    metadata,
    Column("endpoint_key", Text, primary_key=True),
    Column("session_id", Text, primary_key=True),
    Column("due_us", BigInteger, nullable=False),
    Column("exported_us", BigInteger, nullable=False),
    Column("spans", Integer, nullable=False),
    # The trace's id, in hex: what to look for in the backend.
    Column("trace_id", Text, nullable=False),
    Index(None, "endpoint_key", "due_us"),
    Index(None, "session_id"),
)
