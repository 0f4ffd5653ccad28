"""Zero loss: the firehose as a recorder stored it, read back and checked row by row.

After the recorder has stopped, :func:`verify_firehose` reads the rows of its one
connection to the simulator (:mod:`firehose`) and checks them with
:class:`FirehoseRows`: exactly one connection of the recorder's ``storage.instance``,
``seq`` 1..M with no gap or duplicate, every index 0..N-1 exactly once, each payload
stored as text and byte-identical to what the simulator sent (rebuilt with
:func:`recorder.simulator.firehose_template`), ``size`` equal to the payload's length,
exactly one ``stream_end``, and ``connections.frame_count`` equal to the rows. The
outcome is a :class:`LossReport`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from databases import Database
from firehose import DEFAULT_SIZE


@dataclass
class LossReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    chunk_rows: int = 0
    total_rows: int = 0
    avg_frame_bytes: float = 0.0
    in_order: bool = True

    def finish(
        self, frames: int, seen: bytearray, ends: int, frame_count: int, total_bytes: int
    ) -> LossReport:
        """The checks over the whole firehose connection once its rows are read (by
        :class:`FirehoseRows`): ``seen`` counts the rows of each index, ``frame_count``
        is the connection row's."""
        problems = self.problems
        if self.chunk_rows != frames:
            problems.append(f"{self.chunk_rows} stream_chunk rows, expected {frames}")
        missing = seen.count(0)
        duplicated = sum(1 for n in seen if n > 1)
        if missing or duplicated:
            problems.append(f"{missing} indexes missing, {duplicated} duplicated")
        if ends != 1:
            problems.append(f"{ends} stream_end rows, expected 1")
        if frame_count != self.total_rows:
            problems.append(f"connections.frame_count {frame_count} != {self.total_rows} rows")
        self.avg_frame_bytes = total_bytes / max(self.chunk_rows, 1)
        self.ok = not problems
        return self


class FirehoseRows:
    """The firehose connection's rows, checked one at a time as they are read (by
    :func:`verify_firehose`, and in bench/purge.py): a gap-free seq, each index once, byte-identical to the
    wire. :meth:`finish` gives the :class:`LossReport`."""

    def __init__(self, frames: int) -> None:
        self.report = LossReport(ok=True)
        self.frames = frames
        self.seen = bytearray(frames)
        self.expected_seq = 1
        self.prefix = self.suffix = ""
        self.prev_index = -1
        self.ends = self.total_bytes = 0

    def row(
        self,
        seq: int,
        type_: str | None,
        opcode: int,
        size: int,
        payload: str | None,
        payload_bytes: bytes | None,
    ) -> None:
        report, problems = self.report, self.report.problems
        report.total_rows += 1
        if seq != self.expected_seq and len(problems) < 20:
            problems.append(f"seq {seq} where {self.expected_seq} was expected")
        self.expected_seq = seq + 1
        if type_ == "stream_end":
            self.ends += 1
        if type_ != "stream_chunk":
            return
        report.chunk_rows += 1
        if payload is None or payload_bytes is not None or opcode != 1:
            problems.append(f"seq {seq}: not stored as a text payload")
            return
        data = json.loads(payload)["data"]
        index = data["metadata"]["index"]
        if not self.prefix:
            from recorder.simulator import firehose_template

            self.prefix, self.suffix = firehose_template(
                data["sessionId"], DEFAULT_SIZE, self.frames
            )
        encoded = payload.encode()
        self.total_bytes += len(encoded)
        if not 0 <= index < self.frames:
            problems.append(f"seq {seq}: index {index} out of range")
            return
        self.seen[index] += 1
        if encoded != f"{self.prefix}{index}{self.suffix}".encode() and len(problems) < 20:
            problems.append(f"seq {seq}: payload of index {index} differs from the wire")
        if size != len(encoded) and len(problems) < 20:
            problems.append(f"seq {seq}: size {size} != {len(encoded)} payload bytes")
        if index != self.prev_index + 1:
            report.in_order = False
        self.prev_index = index

    def finish(self, frame_count: int) -> LossReport:
        return self.report.finish(self.frames, self.seen, self.ends, frame_count, self.total_bytes)


def verify_firehose(db: Database, instance: str, frames: int) -> LossReport:
    """Every firehose frame exactly once, in a gap-free seq, byte-identical to the wire."""
    check = FirehoseRows(frames)
    links = list(
        db.rows("select id, frame_count from connections where instance = ? order by id", instance)
    )
    if len(links) != 1:
        check.report.problems.append(
            f"{len(links)} connections, expected 1 (the link reconnected?)"
        )
    if not links:
        check.report.ok = False
        return check.report
    cid, frame_count = links[0]
    rows = db.rows(
        "select seq, type, opcode, size, payload, payload_bytes from frames"
        " where connection_id = ? order by seq",
        cid,
    )
    for row in rows:
        check.row(*row)
    return check.finish(frame_count)
