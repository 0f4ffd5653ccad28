"""Which conversation a replay plays, pure: the UI that created the session, followed
across its reconnects, told from a second tab of the same machine by continuity
(opened after the one before closed) and by what it asked (the session's id); and
what it asked, shown."""

from __future__ import annotations

import json

from recorder.protocol.frames import IN, OUT
from recorder.protocol.story import Recording
from recorder.replay.plan import Choice, Cue, ReplayFrame, choose
from recorder.replay.text import show

HOST = "10.0.0.1"
NOW = 10_000


def link(cid: int, opened: int = 0, closed: int | None = None) -> Recording:
    return Recording(cid, "link", "ws://daemon", None, opened, closed, None, None, None)


def ui(
    cid: int, opened: int, closed: int | None, host: str = HOST, code: int | None = 1000
) -> Recording:
    addr = f"{host}:{40000 + cid}"  # every connection has a port of its own
    code = None if closed is None else code
    return Recording(cid, "proxy", "ws://daemon", addr, opened, closed, code, "client", None)


class Lookups:
    """What choose() asked about: a container that notes each lookup, as the read
    side's (a query each) would cost."""

    def __init__(self, asked: set[int]) -> None:
        self.asked = asked
        self.looked_up: list[int] = []

    def __contains__(self, cid: object) -> bool:
        assert isinstance(cid, int)
        self.looked_up.append(cid)
        return cid in self.asked


def chosen(
    recordings: list[Recording], creator: int | None, asked: set[int], end: int = 900
) -> list[int]:
    choice = choose(recordings, creator, 100, end, max(NOW, end), took_part=frozenset(asked))
    return sorted(choice.conversations)


def test_a_reconnect_that_asks_is_followed_and_a_tab_that_watched_is_not() -> None:
    recordings = [
        link(1),
        ui(2, 100, 400),  # tab A: spawns the session
        ui(3, 150, 800),  # tab B, same machine, beside A: only watches
        ui(4, 450, 700),  # A again, after it closed: asks for the session
    ]
    assert chosen(recordings, 2, {4}) == [2, 4]
    # B asked too (a second tab that sends a task): still beside A, not A's reconnect.
    assert chosen(recordings, 2, {3, 4}) == [2, 4]
    # A reconnect that only watched is not played either.
    assert chosen(recordings, 2, set()) == [2]


def test_continuity_counts_from_the_last_connection_played() -> None:
    recordings = [
        ui(2, 100, 200),
        ui(3, 210, 300),  # opened after A closed, asked nothing: a watching tab
        ui(4, 250, 500),  # asked, opened after A closed (beside the watcher: no matter)
        ui(5, 400, 600),  # asked, but beside 4, the reconnect played
        ui(6, 510, None),  # asked, after 4 closed: the next reconnect
    ]
    assert chosen(recordings, 2, {4, 5, 6}) == [2, 4, 6]
    # The spans hide the link's duplicates while each was open; an open one, till now.
    choice = choose(recordings, 2, 100, 900, NOW, took_part=frozenset({4, 5, 6}))
    assert choice.spans == ((100, 200), (250, 500), (510, NOW))


def test_a_ui_that_was_lost_is_followed_by_a_reconnect_opened_before_its_loss_showed() -> None:
    """A UI that vanished (1006: no close frame; 1011: the keepalive gave up) is
    noticed late; its reconnect opened in between still follows it. One that closed
    (1000, 1001) is over when it says so: a connection opened before is beside it."""
    s = 1_000_000
    for code, played in ((1006, [2, 3]), (1011, [2, 3]), (1000, [2]), (1001, [2])):
        recordings = [ui(2, 0, 100 * s, code=code), ui(3, 70 * s, 200 * s)]
        assert chosen(recordings, 2, {3}, end=300 * s) == played, code
    # Not so long before: a tab opened 70 s before the loss was noticed is beside it.
    recordings = [ui(2, 0, 100 * s, code=1006), ui(3, 30 * s, 200 * s)]
    assert chosen(recordings, 2, {3}, end=300 * s) == [2]


def test_a_reconnect_is_from_the_same_machine() -> None:
    recordings = [ui(2, 100, 200), ui(3, 300, 400, host="10.0.0.2")]
    assert chosen(recordings, 2, {3}) == [2]


def test_only_candidates_are_looked_up() -> None:
    """A lookup costs a query: the tab beside the creator, and other machines' UIs,
    are not even asked about."""
    recordings = [
        ui(2, 100, 300),
        ui(3, 150, 800),
        ui(4, 200, 900, host="10.0.0.2"),
        ui(5, 350, 500),
        ui(6, 600, 700, host="10.0.0.2"),  # after 5, from elsewhere
    ]
    lookups = Lookups({5, 6})
    choice = choose(recordings, 2, 100, 900, NOW, took_part=lookups)
    assert sorted(choice.conversations) == [2, 5]
    assert lookups.looked_up == [5]


def test_without_a_creator_the_first_ui_that_asked_leads() -> None:
    recordings = [
        link(1),
        ui(2, 100, 900),  # only watched
        ui(3, 200, 300),  # asked: leads
        ui(4, 250, 600),  # asked beside it: not played
        ui(5, 350, 600),  # asked after it closed: its reconnect
    ]
    assert chosen(recordings, None, {3, 4, 5}) == [3, 5]
    # Nobody asked: no UI's copies, the link's frames are the replay.
    assert chosen(recordings, None, set()) == []
    # A creator outside the session's connections: as if none.
    assert chosen(recordings, 99, {4}) == [4]


def test_without_a_link_the_uis_copies_are_played_one_after_another() -> None:
    """Nobody spawned it through the proxy, nobody asked, and no link was recording:
    what the UIs received is its only record, played once (not two tabs' copies)."""
    recordings = [
        link(1, 0, 50),  # down before the session
        ui(2, 100, 300),
        ui(3, 150, 800),  # beside 2
        ui(4, 350, 600, host="10.0.0.2"),  # after 2, from anywhere
    ]
    assert chosen(recordings, None, set()) == [2, 4]
    # With a link up, the link's frames are the replay.
    assert chosen([*recordings, link(5, 0, None)], None, set()) == []


def test_connections_outside_the_session_are_not_played() -> None:
    recordings = [ui(2, 100, 200), ui(3, 950, 990), ui(4, 10, 50)]
    assert chosen(recordings, 2, {3, 4}) == [2]


def test_only_one_connection() -> None:
    choice = choose([ui(2, 100, 200), ui(3, 300, 400)], 2, 100, 900, NOW, only=3, took_part={2, 3})
    assert choice == Choice(frozenset(), (), 3)


def frame(cid: int, direction: str, at: int = 150) -> ReplayFrame:
    return ReplayFrame(1, cid, 1, direction, at, 0, "x", True, b"{}")


def test_what_a_choice_plays_and_tells() -> None:
    roles = {1: "link", 2: "proxy", 3: "proxy"}
    choice = Choice(frozenset({2}), ((100, 200),))
    # The conversation's both directions; the other tab's neither.
    assert choice.plays(frame(2, IN), roles) and not choice.plays(frame(2, OUT), roles)
    assert choice.asks(frame(2, OUT), roles) and choice.tells(frame(2, OUT), roles)
    assert not choice.tells(frame(3, IN), roles) and not choice.tells(frame(3, OUT), roles)
    # The link's frames while the conversation was open are its duplicates; after, the
    # replay's. The link's requests are the recorder's own, never the UI's.
    assert not choice.tells(frame(1, IN, 150), roles)
    assert choice.tells(frame(1, IN, 250), roles)
    assert not choice.tells(frame(1, OUT, 250), roles)
    only_link = Choice(frozenset(), (), 1)
    assert only_link.tells(frame(1, IN), roles) and not only_link.tells(frame(1, OUT), roles)


def request(data: bytes) -> Cue:
    return Cue(0.0, ReplayFrame(1, 2, 1, OUT, 0, 0, "execute_task", True, data))


def test_what_was_asked_is_shown_as_text_never_obeyed() -> None:
    hostile = "\x1b]52;c;cm0gLXJmIH4=\x07 clear\x1b[2J\nline two \u202egnp.exe"
    asked = {"type": "execute_task", "payload": {"sessionId": "s", "task": hostile}}
    shown = show(request(json.dumps(asked).encode()))
    assert shown is not None and shown.kind == "asked"
    assert shown.label.startswith('execute_task: "') and "line two" in shown.label
    # No character a terminal would obey, and one line.
    assert shown.label.isprintable() and "\x1b" not in shown.label
    spawn = {"type": "spawn_session", "payload": {"task": {"description": "x" * 10_000}}}
    long = show(request(json.dumps(spawn).encode()))
    assert long is not None and long.label.startswith('spawn_session: "xxx')
    assert len(long.label) < 200  # a line, not the 10 000 characters
    odd = show(request(b"\xff\xfe not json"))
    assert odd is not None and (odd.kind, odd.label) == ("asked", "execute_task, 11 bytes")
