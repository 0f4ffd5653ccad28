"""The loaded alert rules, matched against frames and conditions: the one object the
service keeps (pure, no I/O; the outbox and delivery are the caller's).

    rules = Rules.from_config(config.alerts)
    rules.seed(types=..., statuses=...)          # what the database has seen, at start
    for frame, info, session_id in classified:   # in the classifier, per frame
        alerts += rules.on_frame(frame, info, session_id)
    alerts += rules.on_conditions(snapshot, now_us)   # on a timer
    rules.forget(connection_id)                  # a connection closed

Each :class:`~recorder.alerts.occurrence.Occurrence` carries its dedupe key; the same
key twice (after a restart, say) is one alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from recorder.alerts.conditions import Conditions, Snapshot
from recorder.alerts.frames import (
    KNOWN_TYPES,
    STATUS_TYPES,
    FrameMemory,
    matches,
    watched_types,
)
from recorder.alerts.occurrence import ALERT, Gate, Occurrence, shown, window_us
from recorder.alerts.spec import AlertsConfig, Rule
from recorder.protocol.classify import Classified
from recorder.protocol.frames import F_CONNECTION, F_RECEIVED, F_SEQ, FrameTuple

_NONE: tuple[Occurrence, ...] = ()
# The types whose frames say a session's status (what session_status rules read).
_STATUS_READ = STATUS_TYPES | {"sessions_list"}


# A frame rule as on_frame meets it: the rule, whether it is gated (see _gate), and
# its repeat in microseconds (None: once per subject).
_Watch = tuple[Rule, bool, int | None]


def _watch(rule: Rule) -> _Watch:
    """``rule`` with whether its matches on a frame all have the frame's own subject
    (its session, else its connection) and matching it remembers nothing, so that its
    gate can be asked before matching. Not session_status (the subjects are the
    sessions the frame lists), nor tool with result_status (a start is remembered for
    its result)."""
    kind, repeat = rule.when.kind, rule.repeat
    gated = kind in ("task_status", "error_reply", "frame_type") or (
        kind == "tool" and not rule.when.result_status
    )
    return rule, gated, None if repeat is None else window_us(repeat)


class Rules:
    """Frame rules and condition rules, with what matching remembers (bounded)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.frame_rules = tuple(r for r in self.rules if not r.condition)
        self.conditions = Conditions(self.rules)
        self._types = watched_types(self.frame_rules)
        self._unknown = tuple(r for r in self.frame_rules if r.when.kind == "unknown_type")
        others = [r for r in self.frame_rules if r.when.kind != "unknown_type"]
        # Per frame type, the rules that read it (see _watch): a frame meets only its
        # own type's rules.
        self._by_type = {
            t: tuple(_watch(r) for r in others if t in watched_types((r,))) for t in self._types
        }
        self._statuses = any(r.when.kind == "session_status" for r in self.frame_rules)
        self.memory = FrameMemory(KNOWN_TYPES)
        # The same set as the memory's: a frame of a known type costs one lookup more.
        self._known = self.memory.types
        self.gate = Gate()

    @classmethod
    def from_config(cls, config: AlertsConfig) -> Rules:
        return cls(config.rules)

    def reloaded(self, config: AlertsConfig) -> Rules:
        """New rules (SIGHUP) that keep what these remember: statuses and types seen,
        when each rule last alerted for each subject, and the conditions raised, for
        the rules whose name stays."""
        new = Rules.from_config(config)
        new.memory, new._known, new.gate = self.memory, self.memory.types, self.gate
        new.conditions.keep(self.conditions)
        return new

    def seed(self, *, types: Iterable[str] = (), statuses: Iterable[tuple[str, str]] = ()) -> None:
        """What the recording knew before this process: the frame types the daemon has
        sent (none of them is new), and each session's status (only a change alerts)."""
        for type_ in types:
            self.memory.know(type_)
        for session_id, status in statuses:
            self.memory.remember_status(session_id, status)

    def on_frame(
        self, frame: FrameTuple, info: Classified, session_id: str | None
    ) -> Sequence[Occurrence]:
        """The alerts one classified frame raises. ``session_id`` is the frame's own or
        the one attribution gave it (an error reply's). Cheap for a frame no rule reads:
        one set lookup (two with unknown_type): about a tenth of classifying it."""
        type_ = info.type
        rules = self._by_type.get(type_) if type_ is not None else None
        if rules is None and (not self._unknown or type_ in self._known):
            return _NONE
        unknown = bool(self._unknown) and self.memory.new_type(frame, info)
        if not unknown and rules is None:
            return _NONE
        out: list[Occurrence] = []
        if unknown:
            assert type_ is not None
            for rule in self._unknown:
                match = (f"type {type_}", f"new frame type {type_}", info.text or "", session_id)
                self._raise(out, rule, frame, match)
        if not rules:
            return out
        changes = (
            self.memory.status_changes(frame, info)
            if self._statuses and type_ in _STATUS_READ
            else []
        )
        for rule, gated, window in rules:
            if gated:
                # A rule that fires on most frames (a frame_type with a short repeat)
                # is quiet on nearly all of them: ask its gate before matching.
                subject = (
                    session_id if session_id is not None else f"connection {frame[F_CONNECTION]}"
                )
                if self.gate.holds((rule.name, subject), window, frame[F_RECEIVED]):
                    continue
            for match in matches(rule, frame, info, session_id, self.memory, changes):
                self._raise(out, rule, frame, match)
        return out

    def on_conditions(self, snapshot: Snapshot, now_us: int) -> list[Occurrence]:
        """The condition alerts (raised, repeated, resolved) due at ``now_us``."""
        return self.conditions.evaluate(snapshot, now_us)

    def forget(self, connection_id: int) -> None:
        """The connection closed (see :meth:`FrameMemory.forget`)."""
        self.memory.forget(connection_id)

    def _raise(
        self,
        out: list[Occurrence],
        rule: Rule,
        frame: FrameTuple,
        match: tuple[str, str, str, str | None],
    ) -> None:
        subject, what, text, session_id = match
        at = frame[F_RECEIVED]
        occurrence = self.gate.passes(rule.name, subject, rule.repeat, at)
        if occurrence is None:
            return
        out.append(
            Occurrence(
                rule.name,
                ALERT,
                subject,
                occurrence,
                shown(what),
                shown(text),
                session_id,
                at,
                frame[F_CONNECTION],
                frame[F_SEQ],
                rule.notify,
            )
        )
