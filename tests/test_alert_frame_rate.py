"""A frame rule that matches nearly every frame (frame_type on a firehose's chunks)
asks its gate before matching (recorder.alerts.rules): the alerts it raises are still
exactly those of its ``repeat``, per subject, and a rule without one alerts once."""

from __future__ import annotations

import json

from recorder.alerts.rules import Rules
from recorder.config.alerts import parse_alerts
from recorder.protocol.classify import classify
from recorder.protocol.frames import IN, FrameTuple

MS = 1_000
T0 = 1_800_000_000 * 1_000_000


def chunk(seq: int, at_us: int, session: str | None) -> FrameTuple:
    data: dict[str, object] = {"chunk": "x", "index": seq}
    if session is not None:
        data["sessionId"] = session
    frame = {"type": "stream_chunk", "data": data}
    return (1, seq, IN, at_us, 0, True, json.dumps(frame).encode())


def raised(rules: Rules, frames: list[FrameTuple]) -> list[tuple[str, str, int]]:
    out = []
    for frame in frames:
        info = classify(frame[6], frame[5])
        out += [(a.rule, a.subject, a.at_us) for a in rules.on_frame(frame, info, info.session_id)]
    return out


def test_a_rule_on_every_chunk_alerts_once_per_repeat_per_subject() -> None:
    config = parse_alerts(
        {
            "targets": {"hook": "json://127.0.0.1:9/hook"},
            "rules": [
                {
                    "name": "chunks",
                    "when": {"frame_type": ["stream_chunk"]},
                    "notify": ["hook"],
                    "repeat": "0.005s",
                },
                {"name": "once", "when": {"frame_type": ["stream_chunk"]}, "notify": []},
                {"name": "failed", "when": {"session_status": ["failed"]}, "notify": []},
            ],
        },
        {},
    )
    # Two sessions' chunks and some of no session, 1 ms apart, interleaved.
    sessions = ["a", "b", None]
    frames = [chunk(i + 1, T0 + i * MS, sessions[i % 3]) for i in range(30)]
    found = raised(Rules.from_config(config), frames)
    at = [T0 + i * MS for i in range(30)]
    # Each subject's chunks are 3 ms apart: one alert every second one (6 ms >= 5 ms).
    expected_chunks = [
        ("chunks", subject, at[i])
        for i in range(30)
        if i % 6 < 3
        for subject in [sessions[i % 3] or "connection 1"]
    ]
    assert [a for a in found if a[0] == "chunks"] == expected_chunks
    assert [a for a in found if a[0] == "once"] == [
        ("once", "a", at[0]),
        ("once", "b", at[1]),
        ("once", "connection 1", at[2]),
    ]
    assert not [a for a in found if a[0] == "failed"]
