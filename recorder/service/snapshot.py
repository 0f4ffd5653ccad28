"""What the service is doing, at one moment: what /metrics, STATUS= and the
heartbeat row say, read from a snapshot the service hands them rather than from
its parts (the writer, the link, the proxy), which they need not know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recorder.times import format_us, now_us

if TYPE_CHECKING:
    from recorder.capture.link import Link
    from recorder.capture.proxy import Proxy
    from recorder.pipeline.writer import Writer
    from recorder.pipeline.writer_metrics import WriterMetrics


@dataclass(frozen=True)
class LinkState:
    """The daemon link: connecting, connected or waiting; since when; why it last failed."""

    state: str
    url: str
    since_us: int | None = None
    last_error: str | None = None
    last_error_us: int | None = None
    # When the next attempt is due, while waiting.
    retry_at_us: int | None = None
    # Failed attempts and ended connections, by reason.
    reconnects: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyState:
    listen: str
    # UIs connected now, and conversations relayed since the start.
    clients: int
    conversations: int


@dataclass(frozen=True)
class Snapshot:
    link: LinkState
    proxy: ProxyState | None
    # Frames committed by this run, and waiting in the writer's queue (frames, bytes).
    committed: int
    queued: int
    queue_bytes: int
    # Times a producer waited for room in the queue (its socket not read meanwhile).
    backpressure_waits: int
    # Counters the writer processes report: frames and bytes by direction and role,
    # batches and their commit latency, the newest frame's receive time.
    writer: WriterMetrics
    # The database's size when last measured (None: not yet).
    database_bytes: int | None

    def describe(self) -> str:
        """One line (systemd's STATUS=): the link's state, what was recorded, the UIs."""
        link = self.link
        if link.state == "connected":
            said = f"connected to {link.url} since {format_us(link.since_us)[:19]}Z"
        elif link.retry_at_us is not None:
            wait = max(0.0, (link.retry_at_us - now_us()) / 1e6)
            said = f"reconnecting to {link.url} in {wait:.0f} s"
            if link.last_error:
                said += f" after: {link.last_error}"
        else:
            said = f"connecting to {link.url}"
        parts = [said, f"{self.committed:,} frames recorded"]
        if self.proxy is not None:
            parts.append(
                f"{self.proxy.clients} UI(s) proxied now, {self.proxy.conversations} in all"
            )
        return "; ".join(parts)

    def heartbeat(self) -> dict[str, object]:
        """What `recorder status` shows of a running recorder (the heartbeat row)."""
        link = self.link
        return {
            "link": {
                "state": link.state,
                "url": link.url,
                "since_us": link.since_us,
                "last_error": link.last_error,
                "last_error_us": link.last_error_us,
                "retry_at_us": link.retry_at_us,
                "reconnects": link.reconnects,
            },
            "proxy": None
            if self.proxy is None
            else {
                "listen": self.proxy.listen,
                "clients": self.proxy.clients,
                "conversations": self.proxy.conversations,
            },
            "frames_recorded": self.committed,
            "queued": self.queued,
        }


def taken(writer: Writer, link: Link, proxy: Proxy | None, database_bytes: int | None) -> Snapshot:
    """The snapshot of a running service's parts, now."""
    return Snapshot(
        link=LinkState(
            link.state,
            link.safe_url,
            link.since_us,
            link.last_error,
            link.last_error_us,
            link.retry_at_us,
            dict(link.reconnects),
        ),
        proxy=None
        if proxy is None
        else ProxyState(
            f"{proxy.config.proxy.host}:{proxy.port}", proxy.clients, proxy.conversations
        ),
        committed=writer.committed,
        queued=writer.queued,
        queue_bytes=writer.queue.bytes,
        backpressure_waits=writer.queue.waits,
        writer=writer.metrics,
        database_bytes=database_bytes,
    )
