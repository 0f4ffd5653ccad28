"""The classifier process's work on a batch: rows to insert and what they say.

It keeps state across batches: the per-connection memory that attributes spawn
requests and error replies to their sessions
(:class:`~recorder.protocol.attribution.Attribution`), and, when alert rules are set,
what they remember (:class:`~recorder.alerts.rules.Rules`); everything else is a pure
function of the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recorder.protocol.attribution import Attribution
from recorder.protocol.classify import classify
from recorder.protocol.frames import OPCODE_BINARY, OPCODE_TEXT, OUT, FrameTuple
from recorder.protocol.index import IndexBatch

if TYPE_CHECKING:
    from recorder.alerts.rules import Rules
    from recorder.db.write import FrameRow


class Classifier:
    def __init__(self, rules: Rules | None = None) -> None:
        self.attribution = Attribution()
        # The alert rules that look at frames (recorder.alerts), when any are set.
        self.rules = rules

    def rows_and_index(self, batch: Sequence[FrameTuple]) -> tuple[list[FrameRow], IndexBatch]:
        """Classify a batch: the rows to insert and what they say about sessions and tasks."""
        rows: list[FrameRow] = []
        index = IndexBatch()
        append = rows.append
        add = index.add
        see = self.attribution.see
        waiting = self.attribution.waiting
        alerting = self.rules.on_frame if self.rules is not None else None
        for frame in batch:
            cid, seq, direction, received, mono, is_text, data = frame
            info = classify(data, is_text)
            text = info.text
            session_id = info.session_id
            spawn = None
            if direction == OUT or cid in waiting or info.type == "error":
                if info.type == "spawn_session":
                    index.spawns.append((cid, seq))
                attributed, spawn = see(cid, seq, direction, info.type, session_id, info.obj)
                if attributed is not None:
                    session_id = attributed
            size = len(data)
            append(
                (
                    cid,
                    seq,
                    direction,
                    received,
                    mono,
                    OPCODE_TEXT if is_text else OPCODE_BINARY,
                    size,
                    info.type,
                    session_id,
                    info.task_id,
                    info.parse_error,
                    text,
                    None if text is not None else data,
                )
            )
            add(frame, info, session_id, size)
            if alerting is not None:
                raised = alerting(frame, info, session_id)
                if raised:
                    index.alerts.extend(raised)
            if spawn is not None and info.session_id is not None:
                index.attribute(spawn[0], spawn[1], info.session_id, received)
        return rows, index

    @staticmethod
    def unclassified(batch: Sequence[FrameTuple]) -> tuple[list[FrameRow], IndexBatch]:
        """A batch whose classification failed: its rows with nothing read from them
        (``parse_error`` "unclassified"), and only their counts."""
        rows: list[FrameRow] = []
        index = IndexBatch()
        for cid, seq, direction, received, mono, is_text, data in batch:
            text = None
            if is_text and b"\x00" not in data:
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    pass
            opcode = OPCODE_TEXT if is_text else OPCODE_BINARY
            payload = None if text is not None else data
            size = len(data)
            rows.append(
                (
                    cid,
                    seq,
                    direction,
                    received,
                    mono,
                    opcode,
                    size,
                    None,
                    None,
                    None,
                    "unclassified",
                    text,
                    payload,
                )
            )
            index.count(cid, None, direction, received, 1, size)
        return rows, index
