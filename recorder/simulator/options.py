"""What shapes one simulated daemon, and what its journal holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(slots=True)
class SimulatorOptions:
    """Everything that shapes one simulator; defaults match a plain local daemon."""

    host: str = "127.0.0.1"
    port: int = 8787  # 0 picks a free port
    sessions: int = 0
    session_interval: float = 0.5
    # Autonomous sessions start only once a first client is connected, so that a
    # recorder started after the simulator still sees every broadcast.
    wait_for_client: bool = False
    chunk_delay: float = 0.05
    chunks_per_task: tuple[int, int] = (3, 12)
    fail_rate: float = 0.2
    # Tasks (their text) that fail whatever fail_rate draws: a daemon that now fails.
    fail_tasks: tuple[str, ...] = ()
    # Broadcast session_status_update when a client's spawn makes a session; without
    # it, a UI learns the new id only from list_sessions until session_spawned.
    spawn_broadcast: bool = True
    # stream_* and tool_call_* frames to the requester (the seed document's); the
    # published daemon (1.0.39) sends none.
    streams: bool = True
    seed: int | None = None
    status_interval: float = 0.0
    token: str | None = None
    api_key: str | None = None
    max_connections: int = 0
    expire_token_after: float = 0.0
    disconnect_after: int = 0
    disconnects: int = 0
    firehose: int = 0
    firehose_size: int = 180
    max_size: int = 64 * 1024 * 1024
    # Node's ws server, which the real daemon uses, does not negotiate compression.
    compression: bool = False
    journal: bool = True  # keep the in-memory journal; benchmarks may turn it off
    journal_path: str | None = None


class JournalEntry(NamedTuple):
    """One frame as it was on the wire; ``conn`` is 1-based per simulator."""

    conn: int
    direction: str  # "sent" or "received"
    data: str | bytes
