"""The OpenTelemetry live export's operations on the writer line: its cursor
(:mod:`recorder.db.otel_exports`), written in order with the frame batches. The
sends themselves never pass here: the writer is never held by an endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from recorder.db.otel_exports import Exported
from recorder.pipeline.ops import Operation

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store


@dataclass(frozen=True, slots=True)
class StartExports(Operation[None]):
    """The endpoint known to the cursor, exporting what becomes due from ``since_us``
    on; an endpoint known before keeps its cursor."""

    endpoint_key: str
    since_us: int

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.otel_exports import start_endpoint

        await db.run(start_endpoint, self.endpoint_key, self.since_us)


@dataclass(frozen=True, slots=True)
class MarkExported(Operation[None]):
    """Sessions the endpoint took: they are not sent to it again."""

    endpoint_key: str
    sessions: tuple[Exported, ...]
    exported_us: int

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.otel_exports import mark_exported

        await db.run(mark_exported, self.endpoint_key, self.sessions, self.exported_us)
