"""An alert as the rules raise it, before anything stores or sends it, and the
memory that decides whether a rule speaks again for the same subject."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from recorder.protocol.tame import one_line

# Matched text quoted in an alert: one line, about this many characters.
TEXT_LIMIT = 200
# Subjects remembered per Rules (sessions, connections, types): past this many, the
# least recently alerted are forgotten, and the outbox's dedupe key still holds.
MAX_SUBJECTS = 65_536

ALERT = "alert"
RESOLVED = "resolved"
# The report as a scheduled digest (recorder.alerts.digest): its text is the report's
# markdown, escaped by its renderer, and is sent as markdown.
REPORT = "report"


@dataclass(frozen=True)
class Occurrence:
    """One alert raised by one rule.

    ``key`` (rule, subject, occurrence) is the dedupe key: the same key raised twice,
    across restarts too, is one alert. ``subject`` is the session id, else
    ``connection N`` (a frame attributed to no session), ``type T`` (unknown_type) or
    the condition's name. ``occurrence`` is ``once`` for a rule without ``repeat``
    (once per subject, for ever), else it tells the repeats apart (the number of the
    ``repeat``-long window since the epoch; for a condition, when it began).
    """

    rule: str
    # ALERT, or RESOLVED: a condition that ended (rules with resolve = true); REPORT.
    kind: str
    subject: str
    occurrence: str
    # What happened, in a few words: "session failed", "tool run_shell called".
    what: str
    # The matched text, on one line, shortened and escaped (on_one_line); may be "".
    text: str
    session_id: str | None
    # When, on the recorder's clock (the frame's receive time, or the evaluation's).
    at_us: int
    # The frame that matched, for frame rules: (connection id, seq) names it.
    connection_id: int | None = None
    seq: int | None = None
    # The rule's targets, by name.
    notify: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.subject, self.occurrence)


def shown(text: str) -> str:
    """Matched text as an alert quotes it."""
    return one_line(text, TEXT_LIMIT)


def window_us(repeat: float) -> int:
    """A rule's ``repeat`` as the gate counts it: microseconds, at least one."""
    return max(int(repeat * 1_000_000), 1)


class Gate:
    """When each (rule, subject) last alerted, bounded: ``repeat`` seconds must pass
    before it alerts again; a rule without one alerts once per subject."""

    def __init__(self, limit: int = MAX_SUBJECTS) -> None:
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._limit = limit

    def holds(self, key: tuple[str, str], window_us: int | None, at_us: int) -> bool:
        """Whether :meth:`passes` would refuse rule ``key[0]`` for subject ``key[1]``
        at ``at_us`` (noting nothing); ``window_us``: :func:`window_us` of its repeat. A
        frame rule that fires on most frames asks this first, and builds no match
        while it is quiet."""
        last = self._last.get(key)
        return last is not None and (window_us is None or at_us - last < window_us)

    def passes(self, rule: str, subject: str, repeat: float | None, at_us: int) -> str | None:
        """The occurrence id if the rule may alert for ``subject`` at ``at_us`` (and
        then it is noted as having done so), else None."""
        key = (rule, subject)
        last = self._last.get(key)
        if repeat is None:
            if last is not None:
                return None
            occurrence = "once"
        else:
            window = window_us(repeat)
            if last is not None and at_us - last < window:
                return None
            occurrence = str(at_us // window)
        self._last[key] = at_us
        self._last.move_to_end(key)
        if len(self._last) > self._limit:
            self._last.popitem(last=False)
        return occurrence
