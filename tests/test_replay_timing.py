"""Replay's timing, pure: the timeline over each connection's clock, the pace, cues
due on the recording's schedule, and the terminal player and its keys."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest

from recorder.protocol.frames import IN
from recorder.protocol.story import Gap
from recorder.replay.plan import Cue, ReplayFrame, timeline
from recorder.replay.terminal import Player
from recorder.replay.timing import Pace, on_time, paced


def frame(cid: int, at_s: float, mono_s: float, kind: str = "stream_chunk") -> ReplayFrame:
    return ReplayFrame(1, cid, 1, IN, int(at_s * 1e6), int(mono_s * 1e9), kind, True, b"{}")


def test_timeline_uses_each_connections_clock_and_keeps_gaps() -> None:
    frames = [
        frame(1, 10.0, 100.0),
        # Same connection: the monotonic clock (0.25 s), not the receive times (0.3 s).
        frame(1, 10.3, 100.25),
        # Another connection, after a gap: receive times, the gap in between.
        frame(2, 12.0, 7.0),
    ]
    cues = list(timeline(frames, [Gap(int(11.0e6), int(11.5e6))]))
    assert [(round(c.t, 3), c.gap is not None) for c in cues] == [
        (0.0, False),
        (0.25, False),
        (0.95, True),
        (1.95, False),
    ]


def test_pace_speed_idle_cap_and_window() -> None:
    cues = [Cue(t) for t in (0.0, 1.0, 4.0, 4.5)]
    assert [p for p, _ in paced(cues, Pace(speed=2))] == [0.0, 0.5, 1.5, 0.25]
    assert [p for p, _ in paced(cues, Pace(max_idle=1))] == [0.0, 1.0, 1.0, 0.5]
    window = paced(cues, Pace(start=0.5, stop=4.2))
    assert [(p, c.t) for p, c in window] == [(0.0, 1.0), (3.0, 4.0)]
    assert all(p == 0 for p, _ in paced(cues, Pace(instant=True)))


def test_a_frame_received_earlier_on_another_connection_is_no_step_back() -> None:
    # 100 s (connection 1), 99 s (2), 101 s (3): the second plays at once, and the
    # third one second after the first, not two (the step back counted again).
    frames = [frame(1, 100.0, 1.0), frame(2, 99.0, 50.0), frame(3, 101.0, 9.0)]
    assert [c.t for c in timeline(frames, [])] == pytest.approx([0.0, 0.0, 1.0])


class FakeClock:
    """A clock that only moves when told: by a wait, or by the time writing takes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.held: dict[int, float] = {}  # wait number -> seconds a pause key held it

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        held = self.held.get(len(self.waits), 0.0)
        self.waits.append(seconds)
        self.now += seconds + held
        return held > 0


def test_each_cue_is_due_a_pause_after_the_one_before_was_due() -> None:
    clock = FakeClock()
    timed = [(0.0, Cue(0.0)), (1.0, Cue(1.0)), (1.0, Cue(2.0)), (0.5, Cue(2.5))]
    played = []
    for _ in on_time(timed, clock, clock.wait):
        played.append(clock.now)
        clock.now += 0.25  # writing the cue (and, following, polling for the next)
    # Not 0, 1.25, 2.5, 3.25: the time spent writing is not added to every pause.
    assert played == [0.0, 1.0, 2.0, 2.5]
    assert clock.waits == [0.0, 0.75, 0.75, 0.25]

    # Late (a slow poll): the next cue plays at once, and the ones after it are
    # back on the recording's schedule.
    clock = FakeClock()
    played = []
    for cue in on_time(timed, clock, clock.wait):
        played.append(clock.now)
        clock.now += 1.6 if cue.t == 0.0 else 0.0
    assert played == [0.0, 1.6, 2.0, 2.5]

    # Held by the pause key for 10 s: the cues after it keep their pauses from then.
    clock = FakeClock()
    clock.held = {1: 10.0}
    played = []
    for _ in on_time(timed, clock, clock.wait):
        played.append(clock.now)
    assert played == [0.0, 11.0, 12.0, 12.5]


class SlowOutput(io.StringIO):
    """A terminal that takes a tenth of a second per write."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def write(self, text: str) -> int:
        self.clock.now += 0.1
        return super().write(text)


def chunk(t: float, text: str) -> Cue:
    obj = {"type": "stream_chunk", "data": {"chunk": text}}
    data = json.dumps(obj).encode()
    return Cue(t, ReplayFrame(1, 1, 1, IN, 0, 0, "stream_chunk", True, data))


def test_the_terminal_player_keeps_to_the_recorded_schedule() -> None:
    clock = FakeClock()
    out = SlowOutput(clock)
    keys = clock  # Keys' part: wait(seconds) -> held or let go early
    timed = [(0.0, chunk(0.0, "a")), (1.0, chunk(1.0, "b")), (1.0, chunk(2.0, "c"))]
    Player(out, colour=False, clock=clock).play(timed, keys)  # type: ignore[arg-type]
    assert out.getvalue() == "abc\n"
    assert clock.waits == pytest.approx([0.0, 0.9, 0.9])


def test_an_interrupted_replay_still_ends_its_line() -> None:
    def stopped() -> Iterator[tuple[float, Cue]]:
        yield 0.0, chunk(0.0, "half a line")
        raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        Player(out, colour=False, clock=FakeClock()).play(stopped(), FakeClock())  # type: ignore[arg-type]
    assert out.getvalue() == "half a line\n"


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the side a person types into, the side the player reads)."""
    import os

    typed, read = os.openpty()
    try:
        yield typed, read
    finally:
        os.close(typed)
        os.close(read)


def test_space_pauses_and_dot_steps_on_a_real_terminal(terminal: tuple[int, int]) -> None:
    """The replay's keys, read from a pseudo-terminal in cbreak mode: space pauses
    (the wait holds however long it was), `.` lets one cue go while paused, space
    again resumes, and the terminal's mode is given back afterwards."""
    import os
    import termios

    from recorder.replay.terminal import keys_from

    typed, read = terminal
    before = termios.tcgetattr(read)
    with open(read, closefd=False) as stdin, keys_from(stdin, enabled=True) as keys:
        assert not termios.tcgetattr(read)[3] & termios.ICANON  # keys one by one
        started = time.monotonic()
        assert keys.wait(0.01) is False  # nothing typed: the wait passes as it is
        os.write(typed, b" .")  # pause, then step: a 60 s wait lets go at once
        assert keys.wait(60) is True and keys.paused
        os.write(typed, b" ")  # resume: the next wait runs, held by the pause
        assert keys.wait(0.01) is True and not keys.paused
        assert keys.wait(0.01) is False  # and the one after passes as it is
        assert time.monotonic() - started < 30
    assert termios.tcgetattr(read) == before
