"""Frame classification: pure functions, no sockets. Garbage is classified, never
raised; text is kept exactly; ids are found wherever the protocol puts them; strings
no column can hold are left out of the index."""

from __future__ import annotations

import json

import pytest

from recorder.protocol.classify import classify
from recorder.protocol.frames import IN, OUT
from recorder.protocol.index import IndexBatch
from recorder.times import parse_daemon_time
from tests.helpers import frame


@pytest.mark.parametrize(
    ("data", "is_text", "reason"),
    [
        (b"\x00\x01binary", False, "binary"),
        (b'{"type":"x"}', False, "binary"),
        (b"\xff\xfe not utf-8", True, "invalid_utf8"),
        (b"hello", True, "invalid_json"),
        (b"", True, "invalid_json"),
        (b"[1,2,3]", True, "not_object"),
        (b'"just a string"', True, "not_object"),
        (b"[" * 50_000 + b"]" * 50_000, True, "too_deep"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, True, "too_deep"),
    ],
)
def test_garbage_is_classified_not_raised(data: bytes, is_text: bool, reason: str) -> None:
    info = classify(data, is_text)
    assert info.parse_error == reason
    assert info.type is None and info.session_id is None and info.task_id is None


def test_text_is_kept_exactly_unless_it_cannot_be_text() -> None:
    text = '{ "type" : "x",  "type":"y", "s":"\\ud83d", "k": 1 }'
    assert classify(text.encode(), True).text == text
    # Duplicate keys: the last one wins when parsing, the text keeps both.
    assert classify(text.encode(), True).type == "y"
    # PostgreSQL text cannot hold NUL: such frames go to the bytes column.
    assert classify(b'{"type":"x","v":"\x00"}', True).text is None
    assert classify(b"\xff", True).text is None
    assert classify(b"not json", True).text == "not json"


# Input where orjson and the json module part ways, and input where they agree.
PARSER_EDGES = [
    b'{"type":"a","type":"b"}',
    b'{"type":"x","v":NaN}',
    b'{"type":"x","v":-Infinity}',
    b'{"type":"x","s":"\\ud83d"}',
    b'{"type":"\\ud83d\\ude00"}',
    b'{"type":"x","n":1e400}',
    b'{"type":"x","n":123456789012345678901234567890}',
    b"\xef\xbb\xbf{}",
    b' \t\r\n{"type":"ws"} \n',
    b'{"type":"x"} x',
    b'{"type":"x","v":"\x00"}',
    b'{"type":"x","v":"\\u0000"}',
    b'{"type":"x","v":"\x1f"}',
    b"[" * 1025 + b"]" * 1025,
    b'{"a":' * 1100 + b'{"type":"deep"}' + b"}" * 1100,
    b'{"type":"caf\xc3\xa9","sessionId":"s\xe2\x82\xac"}',
    b'{"type":"x","sessionId":"\xed\xa0\xbd"}',
    b"1",
    b"null",
    b"",
]


@pytest.mark.parametrize("data", PARSER_EDGES)
def test_orjson_and_the_json_module_classify_alike(data: bytes) -> None:
    from recorder.protocol.classify import _classify_strictly

    fast, strict = classify(data, True), _classify_strictly(data)
    # The parsed object may differ in numbers (orjson reads integers past 64 bits
    # as floats); the index reads only strings from it.
    assert fast._replace(obj=None) == strict._replace(obj=None)
    assert (fast.obj is None) == (strict.obj is None)


@pytest.mark.parametrize(
    ("obj", "session_id", "task_id"),
    [
        ({"type": "task_completed", "sessionId": "s1", "taskId": "t1"}, "s1", "t1"),
        ({"type": "session_status", "payload": {"sessionId": "s2"}}, "s2", None),
        ({"type": "stream_chunk", "data": {"sessionId": "s3", "chunk": "hi"}}, "s3", None),
        ({"type": "session_spawned", "session": {"id": "s4", "task": {"id": "t4"}}}, "s4", "t4"),
        (
            {"type": "execute_task", "payload": {"sessionId": "s5", "task": "Analyze"}},
            "s5",
            "Analyze",
        ),
        ({"type": "tool_call_result", "data": {"sessionId": "s6", "taskId": "t6"}}, "s6", "t6"),
        ({"type": "error", "error": "Invalid message format"}, None, None),
        ({"type": "x", "sessionId": 12, "taskId": ["t"]}, None, None),
        ({"type": "x", "sessionId": "s" * 300}, None, None),
    ],
)
def test_ids_come_from_wherever_the_protocol_puts_them(
    obj: dict[str, object], session_id: str | None, task_id: str | None
) -> None:
    info = classify(json.dumps(obj).encode(), True)
    assert (info.session_id, info.task_id) == (session_id, task_id)
    assert info.parse_error is None


# Strings JSON can spell that no text column holds: NUL (not in PostgreSQL's text)
# and lone surrogates (no driver encodes them). Surrogate pairs are fine.
UNSTORABLE = ["a\\u0000b", "\\ud800", "x\\udc00y"]


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_ids_no_column_can_hold_are_left_out(bad: str) -> None:
    data = f'{{"type":"{bad}","sessionId":"{bad}","taskId":"t","data":{{"sessionId":"s"}}}}'
    info = classify(data.encode(), True)
    assert (info.type, info.session_id, info.task_id) == (None, "s", "t")
    assert info.text == data  # the frame itself is kept exactly
    assert classify(b'{"type":"\\ud83d\\ude00"}', True).type == "\U0001f600"


@pytest.mark.parametrize("bad", UNSTORABLE)
def test_descriptions_and_errors_no_column_can_hold_are_left_out(bad: str) -> None:
    batch = IndexBatch()
    for text, direction in [
        (
            f'{{"type":"session_status_update","session":{{"id":"s1","status":"{bad}",'
            f'"task":{{"id":"t1","description":"{bad}"}}}}}}',
            IN,
        ),
        (f'{{"type":"task_failed","sessionId":"s1","taskId":"t1","error":"{bad}"}}', IN),
        (f'{{"type":"execute_task","payload":{{"sessionId":"s1","task":"{bad}"}}}}', OUT),
    ]:
        f = frame(text, direction)
        batch.add(f, classify(f.data, True), "s1", len(f.data))
    session = batch.sessions["s1"]
    assert (session.status, session.task_description, session.last_error) == (None, None, None)
    task = batch.tasks[("s1", "t1")]
    assert (task.description, task.error, task.status) == (None, None, "failed")


def test_non_string_type_is_null_but_frame_is_an_object() -> None:
    info = classify(b'{"type":{"nested":1}}', True)
    assert info.type is None and info.parse_error is None


def test_daemon_times() -> None:
    assert parse_daemon_time("2026-11-26T11:28:57.464Z") == 1795692537464000
    assert parse_daemon_time("2026-11-26T11:28:57Z") == 1795692537000000
    assert parse_daemon_time("yesterday") is None
    assert parse_daemon_time("2026-11-26T11:28:57") is None  # no zone: ambiguous
    assert parse_daemon_time(17) is None
    # Exact at the ends of the calendar and before 1970 (a float was a second off).
    assert parse_daemon_time("9999-12-31T23:59:59.999999Z") == 253402300799999999
    assert parse_daemon_time("1969-12-31T23:59:59.5Z") == -500000
