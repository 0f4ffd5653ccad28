"""Alert rules, pure: frames classified by the real classifier (its attribution
included) go through Rules.on_frame; snapshots of the service's state through
Rules.on_conditions. No sockets, no database."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from typing import Any

import pytest

from recorder.alerts.conditions import Snapshot
from recorder.alerts.frames import MAX_TYPES
from recorder.alerts.notify import message, title
from recorder.alerts.occurrence import ALERT, RESOLVED, TEXT_LIMIT, Occurrence
from recorder.alerts.rules import Rules
from recorder.alerts.spec import mask_url
from recorder.config import ConfigError
from recorder.config.alerts import parse_alerts
from recorder.pipeline.classifier import Classifier
from recorder.protocol.classify import classify
from recorder.protocol.frames import IN, OUT, FrameTuple

S = 1_000_000
T0 = 1_800_000_000 * S
TARGETS = '[alerts.targets]\nphone = "json://127.0.0.1:9/hook"\n'


def rules(toml: str) -> Rules:
    """Rules as the configuration loader builds them from ``[[alerts.rules]]`` text."""
    raw = tomllib.loads(TARGETS + toml)["alerts"]
    return Rules.from_config(parse_alerts(raw, {}))


class Wire:
    """Frames as the link hands them to the classifier: per connection, seq in order."""

    def __init__(self) -> None:
        self.classifier = Classifier()
        self.seqs: dict[int, int] = {}
        self.at = T0

    def frames(self, *items: tuple[int, str, Any]) -> list[FrameTuple]:
        out = []
        for cid, direction, obj in items:
            self.seqs[cid] = self.seqs.get(cid, 0) + 1
            self.at += S
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            out.append((cid, self.seqs[cid], direction, self.at, 0, True, data))
        return out

    def feed(self, r: Rules, *items: tuple[int, str, Any]) -> list[Occurrence]:
        """Classify the frames as one batch; each frame, with the session the
        classifier's row gives it (attribution's for errors), through the rules."""
        batch = self.frames(*items)
        rows, _ = self.classifier.rows_and_index(batch)
        found: list[Occurrence] = []
        for frame, row in zip(batch, rows, strict=True):
            found += r.on_frame(frame, classify(frame[6], frame[5]), row[8])
        return found


def session(sid: str, status: str, description: str = "Implement feature X") -> dict[str, Any]:
    return {
        "id": sid,
        "orchestratorId": "vp_123",
        "status": status,
        "task": {"id": "task_1", "description": description, "status": "pending"},
    }


def status_update(sid: str, status: str) -> dict[str, Any]:
    return {"type": "session_status_update", "session": session(sid, status)}


def tool_start(sid: str, name: str, tool_input: Any) -> dict[str, Any]:
    data = {"sessionId": sid, "toolName": name, "toolInput": tool_input, "status": "started"}
    return {"type": "tool_call_start", "data": data}


def tool_result(sid: str, name: str, status: str) -> dict[str, Any]:
    result = {"error": "exit 1"} if status == "failed" else {"content": "ok"}
    data = {"sessionId": sid, "toolName": name, "status": status, "result": result}
    return {"type": "tool_call_result", "data": data}


FAILED = """
[[alerts.rules]]
name = "session-failed"
when = { session_status = ["failed"] }
notify = ["phone"]
"""


def test_a_failed_session_alerts_once_and_a_completed_one_does_not() -> None:
    r, wire = rules(FAILED), Wire()
    found = wire.feed(
        r,
        (1, IN, {"type": "session_spawned", "session": session("s_ok", "completed")}),
        (1, IN, {"type": "session_spawned", "session": session("s_bad", "failed")}),
        # The daemon broadcasts the status, and the asking client gets it again.
        (1, IN, status_update("s_bad", "failed")),
        (2, IN, status_update("s_bad", "failed")),
        (1, IN, {"type": "sessions_list", "sessions": [session("s_ok", "completed")]}),
        (1, IN, {"type": "sessions_list", "sessions": [session("s_bad", "failed")]}),
    )
    assert [(a.rule, a.kind, a.session_id, a.what) for a in found] == [
        ("session-failed", ALERT, "s_bad", "session failed")
    ]
    alert = found[0]
    assert alert.key == ("session-failed", "s_bad", "once")
    assert alert.text == "Implement feature X" and alert.notify == ("phone",)
    assert (alert.connection_id, alert.seq, alert.at_us) == (1, 2, T0 + 2 * S)
    # Running again and failing again is the same session: once, by default.
    assert wire.feed(r, (1, IN, status_update("s_bad", "running"))) == []
    assert wire.feed(r, (1, IN, status_update("s_bad", "failed"))) == []


def test_a_status_already_known_is_no_change() -> None:
    r = rules(FAILED)
    r.seed(statuses=[("s_old", "failed")])
    wire = Wire()
    listing = {"type": "sessions_list", "sessions": [session("s_old", "failed")]}
    assert wire.feed(r, (1, IN, listing)) == []
    # What the UI sent is not what the daemon says.
    assert (
        wire.feed(r, (1, OUT, {"type": "session_spawned", "session": session("x", "failed")})) == []
    )


def test_repeat_lets_a_rule_speak_again_for_the_same_session_after_that_long() -> None:
    r, wire = rules(FAILED + 'repeat = "1h"\n'), Wire()
    first = wire.feed(r, (1, IN, status_update("s", "failed")))
    wire.feed(r, (1, IN, status_update("s", "running")))
    assert wire.feed(r, (1, IN, status_update("s", "failed"))) == []  # two seconds later
    wire.at += 3600 * S
    wire.feed(r, (1, IN, status_update("s", "running")))
    again = wire.feed(r, (1, IN, status_update("s", "failed")))
    assert len(first) == len(again) == 1
    assert first[0].key != again[0].key and first[0].key[:2] == again[0].key[:2]


SHELL = """
[[alerts.rules]]
name = "destructive-shell"
when = { tool = "run_shell", input_matches = "rm\\\\s+-rf" }
notify = ["phone"]
"""


def test_a_tool_call_that_matches_alerts_with_its_session_and_input_shortened_and_escaped() -> None:
    r, wire = rules(SHELL), Wire()
    hostile = "rm  -rf /srv/data \x1b]52;c;ZXZpbA==\x07\n# " + "x" * 5000
    found = wire.feed(
        r,
        (1, IN, tool_start("s1", "run_shell", {"command": "ls -la"})),
        (1, IN, tool_start("s1", "read_file", {"path": "rm -rf"})),
        (1, IN, tool_start("s1", "run_shell", {"command": hostile})),
    )
    assert len(found) == 1
    alert = found[0]
    assert (alert.session_id, alert.subject, alert.what) == ("s1", "s1", "tool run_shell called")
    # The JSON text, as input_matches read it: its controls are escapes already.
    assert alert.text.startswith(
        '{"command":"rm  -rf /srv/data \\u001b]52;c;ZXZpbA==\\u0007\\n# xxx'
    )
    assert alert.text.isprintable() and len(alert.text) <= TEXT_LIMIT
    whole = json.dumps({"command": hostile}, separators=(",", ":"))
    assert alert.text.endswith(f"… ({len(whole):,} chars)")
    line = message(alert, "https://rec.example.net/")
    assert line.isprintable() and "\x1b" not in line
    assert line.startswith('[destructive-shell] tool run_shell called, session s1: "{')
    assert line.endswith(" https://rec.example.net/sessions/s1")


def test_tool_globs_and_result_status_pair_each_result_with_its_start() -> None:
    r = rules(
        """
[[alerts.rules]]
name = "failed-deletes"
when = { tool = "run_*", input_matches = "delete", result_status = ["failed"] }
notify = ["phone"]
"""
    )
    wire = Wire()
    found = wire.feed(
        r,
        (1, IN, tool_start("s", "run_sql", {"q": "delete from t"})),
        (1, IN, tool_start("s", "run_sql", {"q": "select 1"})),
        (1, IN, tool_result("s", "run_sql", "completed")),  # the delete went well
        (1, IN, tool_result("s", "run_sql", "failed")),  # the select failed
        (2, IN, tool_start("t", "run_shell", {"c": "delete me"})),
        (2, IN, tool_result("t", "run_shell", "failed")),
    )
    assert [(a.session_id, a.what, a.text) for a in found] == [
        ("t", "tool run_shell failed", '{"c":"delete me"}')
    ]


def test_a_tool_rule_with_only_a_result_status_needs_no_start() -> None:
    r = rules(
        '[[alerts.rules]]\nname = "tool-failed"\nnotify = []\n'
        'when = { tool = "*", result_status = "failed" }\n'
    )
    found = Wire().feed(r, (1, IN, tool_result("s", "read_file", "failed")))
    assert [(a.what, a.text, a.notify) for a in found] == [("tool read_file failed", "exit 1", ())]


ERRORS = """
[[alerts.rules]]
name = "errors"
when = { error_reply = true }
notify = ["phone"]
repeat = "1s"
"""


def test_an_error_reply_alerts_with_the_session_it_is_attributed_to() -> None:
    r, wire = rules(ERRORS), Wire()
    found = wire.feed(
        r,
        # A real daemon's error names nothing: it answers the latest request.
        (3, OUT, {"type": "execute_task", "payload": {"sessionId": "s_a", "task": "go"}}),
        (3, IN, {"type": "error", "error": "Invalid message format"}),
        # "Session not found: <id>" names its own.
        (3, IN, {"type": "error", "error": "Session not found: s_gone"}),
        # Nothing asked on this connection: no session, the connection is the subject.
        (4, IN, {"type": "error", "error": "Invalid\x1b[2J\nformat"}),
    )
    assert [(a.session_id, a.subject, a.text) for a in found] == [
        ("s_a", "s_a", "Invalid message format"),
        ("s_gone", "s_gone", "Session not found: s_gone"),
        (None, "connection 4", "Invalid\\x1b[2J\\nformat"),
    ]
    assert (
        message(found[2], "https://r.example") == '[errors] error reply: "Invalid\\x1b[2J\\nformat"'
    )
    assert message(found[0], "https://r.example") == (
        '[errors] error reply, session s_a: "Invalid message format" https://r.example/sessions/s_a'
    )


def test_an_error_rule_with_matches_reads_the_text() -> None:
    r = rules(ERRORS.replace("error_reply = true", 'error_reply = { matches = "(?i)token" }'))
    found = Wire().feed(
        r,
        (1, IN, {"type": "error", "error": "Invalid message format"}),
        (1, IN, {"type": "error", "error": "Token expired"}),
    )
    assert [a.text for a in found] == ["Token expired"]


def test_task_status_and_frame_type() -> None:
    r = rules(
        """
[[alerts.rules]]
name = "task-failed"
when = { task_status = ["failed"] }
notify = ["phone"]

[[alerts.rules]]
name = "daemon-status"
when = { frame_type = ["daemon_status_update"] }
notify = ["phone"]
"""
    )
    failed = {"type": "task_failed", "sessionId": "s", "taskId": "t", "error": "boom"}
    found = Wire().feed(
        r,
        (1, IN, {"type": "task_completed", "sessionId": "s", "taskId": "t0"}),
        (1, IN, failed),
        (1, IN, {"type": "daemon_status_update", "status": {"status": "running"}}),
    )
    assert [(a.rule, a.subject, a.what, a.text) for a in found] == [
        ("task-failed", "s", "task failed", "boom"),
        (
            "daemon-status",
            "connection 1",
            "frame daemon_status_update",
            '{"type": "daemon_status_update", "status": {"status": "running"}}',
        ),
    ]


UNKNOWN = '[[alerts.rules]]\nname = "drift"\nwhen = { unknown_type = true }\nnotify = ["phone"]\n'


def test_a_type_the_daemon_never_sent_alerts_once() -> None:
    r, wire = rules(UNKNOWN), Wire()
    r.seed(types=["seen_before"])
    found = wire.feed(
        r,
        (1, IN, {"type": "pong"}),
        (1, IN, {"type": "seen_before"}),
        (1, OUT, {"type": "ui_invention"}),  # what a client sends is not the daemon's
        (1, IN, {"type": "session_paused", "sessionId": "s"}),
        (2, IN, {"type": "session_paused", "sessionId": "t"}),
        (1, IN, b"not json"),
    )
    assert [(a.subject, a.what, a.session_id) for a in found] == [
        ("type session_paused", "new frame type session_paused", "s")
    ]


def test_the_types_remembered_are_bounded() -> None:
    r, wire = rules(UNKNOWN), Wire()
    r.seed(types=[f"t{i}" for i in range(MAX_TYPES)])
    assert wire.feed(r, (1, IN, {"type": "one_too_many"})) == []


def test_a_frame_no_rule_reads_costs_nothing() -> None:
    r = rules(FAILED)
    frame: FrameTuple = (1, 1, IN, T0, 0, True, b'{"type":"stream_chunk"}')
    assert r.on_frame(frame, classify(frame[6], True), "s") == ()


CONDITIONS = """
[[alerts.rules]]
name = "link-down"
when = { link_down_for = "5m" }
notify = ["phone"]
resolve = true

[[alerts.rules]]
name = "link-down-quiet"
when = { link_down_for = "5m" }
notify = ["phone"]
repeat = "1h"
"""


def test_a_link_down_longer_than_link_down_for_alerts_then_resolves() -> None:
    r = rules(CONDITIONS)
    down = Snapshot(link_up=False, link_since_us=T0)
    assert r.on_conditions(down, T0 + 299 * S) == []
    raised = r.on_conditions(down, T0 + 300 * S)
    assert [(a.rule, a.kind, a.subject, a.what) for a in raised] == [
        ("link-down", ALERT, "link down", "link down for 5m"),
        ("link-down-quiet", ALERT, "link down", "link down for 5m"),
    ]
    assert raised[0].key == ("link-down", "link down", str(T0))
    assert message(raised[0]) == "[link-down] link down for 5m"
    # Raised once until it ends; the rule with repeat speaks again an hour later.
    assert r.on_conditions(down, T0 + 600 * S) == []
    again = r.on_conditions(down, T0 + 3900 * S + 1)
    assert [(a.rule, a.occurrence, a.what) for a in again] == [
        ("link-down-quiet", f"{T0}+1", "link down for 1h 5m")
    ]
    up = Snapshot(link_up=True, link_since_us=T0 + 4000 * S)
    resolved = r.on_conditions(up, T0 + 4000 * S)
    assert [(a.rule, a.kind, a.key) for a in resolved] == [
        ("link-down", RESOLVED, ("link-down", "link down", f"{T0} resolved"))
    ]
    assert message(resolved[0]) == "[link-down] link down resolved: link up"
    # Not known (no link in this process): nothing changes.
    assert r.on_conditions(Snapshot(), T0 + 5000 * S) == []
    # Down anew: a new occurrence.
    later = Snapshot(link_up=False, link_since_us=T0 + 6000 * S)
    assert [a.key[2] for a in r.on_conditions(later, T0 + 7000 * S)] == [str(T0 + 6000 * S)] * 2


@pytest.mark.parametrize(
    ("when", "quiet", "loud", "what"),
    [
        (
            'silent_for = "10m"',
            Snapshot(link_up=True, link_since_us=T0, last_frame_us=T0 + 100 * S),
            Snapshot(link_up=True, link_since_us=T0, last_frame_us=T0 - 100 * S),
            "no frame from the daemon for 10m",
        ),
        (
            'recording_behind = "30s"',
            Snapshot(behind_since_us=None),
            Snapshot(behind_since_us=T0 + 550 * S),
            "recording behind for 50s",
        ),
        (
            "writer_fault = true",
            Snapshot(),
            Snapshot(writer_fault="disk I/O error\x1b[2J", writer_fault_since_us=T0),
            "writer fault: disk I/O error\\x1b[2J",
        ),
        (
            'db_size_above = "2GB"',
            Snapshot(db_bytes=2 * 10**9),
            Snapshot(db_bytes=2_100_000_000),
            "database 2.1 GB, limit 2.0 GB",
        ),
        (
            'disk_free_below = "1GiB"',
            Snapshot(disk_free_bytes=2**30),
            Snapshot(disk_free_bytes=10**6),
            "disk free 1.0 MB, floor 1.1 GB",
        ),
    ],
)
def test_each_condition_raises_and_resolves(
    when: str, quiet: Snapshot, loud: Snapshot, what: str
) -> None:
    r = rules(f'[[alerts.rules]]\nname = "c"\nwhen = {{ {when} }}\nnotify = []\nresolve = true\n')
    now = T0 + 600 * S
    assert r.on_conditions(quiet, now) == []
    raised = r.on_conditions(loud, now)
    assert [(a.kind, a.what) for a in raised] == [(ALERT, what)]
    assert raised[0].what.isprintable()
    assert r.on_conditions(loud, now + S) == []
    assert [a.kind for a in r.on_conditions(quiet, now + 2 * S)] == [RESOLVED]


def test_a_notification_links_the_session_page_with_the_id_encoded() -> None:
    r, wire = rules(FAILED), Wire()
    sid = 'a/b"<script>\n'
    found = wire.feed(r, (1, IN, status_update(sid, "failed")))
    line = message(found[0], "https://rec.example.net/console/")
    assert line == (
        '[session-failed] session failed, session a/b"<script>\\n: "Implement feature X" '
        "https://rec.example.net/console/sessions/a%2Fb%22%3Cscript%3E%0A"
    )
    assert "sessions/" not in message(found[0], "")
    assert title(found[0]) == 'session-failed: a/b"<script>\\n'


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ntfy://user:pass@ntfy.example.net/agents", "ntfy://***@ntfy.example.net/***"),
        ("json://127.0.0.1:9000/hook?token=abc", "json://127.0.0.1:9000/***?***"),
        ("gotify://nas:8080/AbCdEf123", "gotify://nas:8080/***"),
        ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-100123", "tgram://***/***"),
        ("pbul://o.gn5kj6nfhv736I7jC3cj3QLRiyhgl98b", "pbul://***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***/***"),
        ("mailto://me:pw@gmail.com", "mailto://***@gmail.com"),
        ("json://[::1]:9000/", "json://[::1]:9000"),
        ("not a url with s3cret", "***"),
    ],
)
def test_mask_url_keeps_only_scheme_and_host(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def keys(found: Sequence[Occurrence]) -> list[tuple[str, str, str]]:
    return [a.key for a in found]


def test_keys_are_the_same_after_a_restart() -> None:
    """A new process (new Rules, nothing seeded) raises the same keys for the same
    events: the outbox can tell what it already delivered."""
    first, second = rules(FAILED + UNKNOWN), rules(FAILED + UNKNOWN)
    items = (
        (1, IN, status_update("s", "failed")),
        (1, IN, {"type": "session_paused", "sessionId": "s"}),
    )
    assert (
        keys(Wire().feed(first, *items))
        == keys(Wire().feed(second, *items))
        == [
            ("session-failed", "s", "once"),
            ("drift", "type session_paused", "once"),
        ]
    )


def test_a_reload_keeps_what_the_rules_remember() -> None:
    r, wire = rules(FAILED + CONDITIONS), Wire()
    assert len(wire.feed(r, (1, IN, status_update("s", "failed")))) == 1
    down = Snapshot(link_up=False, link_since_us=T0)
    assert len(r.on_conditions(down, T0 + 300 * S)) == 2
    changed = CONDITIONS.replace('repeat = "1h"', 'repeat = "2h"')
    again = r.reloaded(parse_alerts(tomllib.loads(TARGETS + FAILED + changed)["alerts"], {}))
    assert wire.feed(again, (1, IN, status_update("s", "failed"))) == []
    # The rule that stayed the same stays raised; the one that changed starts anew.
    assert [a.rule for a in again.on_conditions(down, T0 + 301 * S)] == ["link-down-quiet"]


def test_rule_regexes_are_re2_linear_in_the_text_and_take_any_text() -> None:
    """No backtracking: what a frame holds cannot make a rule take seconds (attacks in
    test_alert_attacks). A lone surrogate in the input's text is searched as U+FFFD."""
    r = rules(
        '[[alerts.rules]]\nname = "rm"\nnotify = []\n'
        'when = { tool = "*", input_matches = "rm\\\\s+-rf" }\n'
    )
    found = Wire().feed(
        r,
        (
            1,
            IN,
            {
                "type": "tool_call_start",
                "data": {
                    "sessionId": "s",
                    "toolName": "sh",
                    "toolInput": {"cmd": "\ud800 rm  -rf /"},
                },
            },
        ),
    )
    assert [a.rule for a in found] == ["rm"]
    with pytest.raises(ConfigError, match=r"bad regex '\(\?<=a\)b': .*\(RE2 syntax\)"):
        rules(
            '[[alerts.rules]]\nname = "x"\nnotify = []\nwhen = { tool = "*", input_matches = "(?<=a)b" }\n'
        )
