"""``--wait-for-client``'s matching, pure: a client's request stands for a recorded one
when its type and the ids it names are the same, whatever else differs."""

from __future__ import annotations

import json

from recorder.replay.matching import describe, request_key


def key(obj: object) -> bytes:
    return request_key(json.dumps(obj).encode())


def test_task_text_key_order_and_whitespace_do_not_matter() -> None:
    recorded = b'{"type": "execute_task", "payload": {"sessionId": "session_1", "task": "Fix it"}}'
    mine = {"payload": {"task": "Do it my way", "streamResponse": True, "sessionId": "session_1"}}
    assert request_key(recorded) == key({"type": "execute_task", **mine})


def test_the_type_and_every_id_matter() -> None:
    base = {"type": "execute_task", "payload": {"sessionId": "session_1", "task": "t"}}
    assert key(base) != key({**base, "type": "stop_session"})
    assert key(base) != key({"type": "execute_task", "payload": {"sessionId": "session_2"}})
    spawn = {"type": "spawn_session", "payload": {"orchestratorId": "vp_7", "task": {"x": 1}}}
    other_text = {"type": "spawn_session", "payload": {"orchestratorId": "vp_7", "task": "y"}}
    assert key(spawn) == key(other_text)
    assert key(spawn) != key({"type": "spawn_session", "payload": {"orchestratorId": "vp_8"}})
    # A top-level id counts too; a number named like an id is no id.
    assert key({"type": "ping", "sessionId": "a"}) != key({"type": "ping"})
    assert key({"type": "ping", "sessionId": 1}) == key({"type": "ping"})


def test_a_request_that_is_not_a_typed_object_matches_only_its_bytes() -> None:
    assert request_key(b"hello") == request_key(b"hello")
    assert request_key(b"hello") != request_key(b"hello ")
    assert request_key(b'{"type": 1}') != request_key(b'{"type":1}')
    assert len(request_key(b"x" * 1_000_000)) == 16


def test_describe_names_type_and_ids_never_the_text() -> None:
    data = json.dumps(
        {"type": "execute_task", "payload": {"task": "secret plan", "sessionId": "session_1"}}
    ).encode()
    assert describe(data) == "execute_task sessionId=session_1"
    hostile = json.dumps({"type": "x\n\x1b[2J", "payload": {"sessionId": "s" * 200}}).encode()
    line = describe(hostile)
    assert "\n" not in line and "\x1b" not in line and len(line) < 120
    assert describe(b"\x00\x01") == "a request of 2 bytes that is not a JSON object with a type"
