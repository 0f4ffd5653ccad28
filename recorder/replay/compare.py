"""Two conversations compared by what the daemon answered: does it still fail this way?

Pure functions over replies reduced to ``(type, status, error text)`` tuples (see
:func:`summarise`), one list for the recorded conversation and one for the replayed
one. What is expected to differ between two runs is left out before comparing:

- ids, timestamps and metrics are not part of a reply's tuple at all; ids and
  times inside error texts are masked (``session_…``, ``<time>``);
- stream text is not compared, and a run of consecutive ``stream_chunk`` frames
  counts as one reply (a model seldom answers in the same number of chunks);
- a ``session_status_update`` repeated with the same status counts once (the
  daemon may send the requester its broadcast and a direct reply).

What remains is aligned by frame kind (``task_completed`` and ``task_failed`` are
one kind, the outcome of a task, so a task that now fails shows as *changed*) and
reported as findings: a reply **missing** from the new conversation, a **new** one,
one **reordered** (present in both, elsewhere), or one **changed** in type, status
or error text. Positions are 1-based, in each conversation's own list of replies.

Whose difference it is. A replay that could not keep the recorded order (a reply it
waited for never came, so it sent the next request anyway; an id it could not learn
in time) says so as a :class:`Hitch`, with how many replies each side had had by then.
Findings before the first hitch are the daemon's; those after it may be the replay's
own doing, and are told apart (``by``). The daemon's own events (it closed the
connection early; the reply the recording ended with never came) are findings with
their cause. Only findings by the daemon make the daemon *different*.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from recorder.protocol.tame import read_object

# (frame type, status, error text): the parts of a reply a comparison looks at.
Reply = tuple[str | None, str | None, str | None]
# An error text longer than this is kept as its start and a digest of the rest.
LONGEST_ERROR = 1000

# Types that end up in one kind: an outcome that changed is a change, not a
# missing reply plus a new one.
_KINDS = {"task_completed": "task outcome", "task_failed": "task outcome"}
_MASKS = (
    (re.compile(r"\b(session|task|memory)_[A-Za-z0-9_]+"), r"\1_…"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (
        re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<time>",
    ),
)


def kind(type_: str | None) -> str:
    """The kind a reply is aligned by: its type, with task outcomes as one."""
    if type_ is None:
        return "(not JSON)"
    return _KINDS.get(type_, type_)


def summarise(is_text: bool, data: bytes) -> Reply:
    """A daemon frame as ``(type, status, error text)``; ``(None, None, None)`` when it
    is not a JSON object."""
    if not is_text:
        return None, None, None
    obj = read_object(data)
    if obj is None:
        return None, None, None
    type_ = obj.get("type") if isinstance(obj.get("type"), str) else None
    inner = obj.get("session") or obj.get("data") or obj.get("status")
    status = inner.get("status") if isinstance(inner, dict) else obj.get("status")
    if type_ == "health_check_response":
        status = "healthy" if obj.get("healthy") else "unhealthy"
    error = obj.get("error")
    if error is None and isinstance(inner, dict) and isinstance(inner.get("result"), dict):
        error = inner["result"].get("error")  # a failed tool call
    if error is not None and not isinstance(error, str):
        error = json.dumps(error, ensure_ascii=False, sort_keys=True)
    if error is not None and len(error) > LONGEST_ERROR:
        # Kept for every reply of a conversation: the start, and a digest of the rest
        # with its ids masked, so that two texts still compare as they did.
        rest = normalise_error(error[LONGEST_ERROR:]) or ""
        digest = hashlib.blake2b(rest.encode(errors="surrogatepass"), digest_size=8).hexdigest()
        error = f"{error[:LONGEST_ERROR]}… ({len(error):,} chars, digest {digest})"
    return type_, status if isinstance(status, str) else None, error


def normalise_error(text: str | None) -> str | None:
    """An error text with ids and times masked, so two runs' texts can be compared."""
    if text is None:
        return None
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


@dataclasses.dataclass(frozen=True)
class Item:
    """A reply as compared: one frame, or a run of stream chunks."""

    position: int  # 1-based, in the conversation's replies
    type: str | None
    status: str | None
    error: str | None
    # Frames this item stands for (a run of chunks); not compared.
    count: int = 1

    @property
    def kind(self) -> str:
        return kind(self.type)

    def same_as(self, other: Item) -> bool:
        return (self.type, self.status, self.error) == (other.type, other.status, other.error)

    def describe(self) -> str:
        text = f"{self.type or '(not JSON)'}" + (f" x{self.count}" if self.count > 1 else "")
        if self.status is not None:
            text += f" ({self.status})"
        if self.error is not None:
            text += f": {_quote(self.error)}"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"position": self.position, "status": self.status}
        return out | {"error": self.error} | ({"frames": self.count} if self.count > 1 else {})


def _quote(text: str, limit: int = 120) -> str:
    text = text.replace("\n", "\\n")
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _items(replies: Iterable[Reply]) -> list[Item]:
    items: list[Item] = []
    for position, (type_, status, error) in enumerate(replies, 1):
        item = Item(position, type_, status, normalise_error(error))
        last = items[-1] if items else None
        if last is not None and type_ == last.type == "stream_chunk":
            items[-1] = dataclasses.replace(last, count=last.count + 1)
        elif not (last is not None and type_ == "session_status_update" and item.same_as(last)):
            items.append(item)
    return items


@dataclasses.dataclass(frozen=True)
class Hitch:
    """Where the replay could not keep the recorded order, and why."""

    text: str
    recorded: int  # recorded replies before the request it concerns
    replayed: int  # replies the new daemon had sent by then

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "recorded_replies_before": self.recorded,
                "replayed_replies_before": self.replayed}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Finding:
    # "missing", "new", "reordered", "changed"; the daemon's events: "timeout", "closed"
    kind: str
    type: str | None
    recorded: Item | None
    replayed: Item | None
    by: str = "daemon"  # or "replay": after a hitch, maybe the replay's own doing
    cause: str | None = None  # of an event

    def text(self) -> str:
        line = self._text()
        return line if self.by == "daemon" else f"{line}  [after the replay differed]"

    def _text(self) -> str:
        was, now = self.recorded, self.replayed
        if self.cause is not None:
            return f"{self.kind:<10} {self.cause}"
        if self.kind == "missing" and was is not None:
            return f"missing    reply {was.position}: {was.describe()}"
        if self.kind == "new" and now is not None:
            return f"new        reply {now.position}: {now.describe()}"
        assert was is not None and now is not None
        if self.kind == "reordered":
            return (
                f"reordered  {was.describe()}: reply {was.position} recorded, "
                f"reply {now.position} now"
            )
        changes = []
        if was.type != now.type:
            changes.append(f"{was.type} -> {now.type}")
        if was.status != now.status:
            changes.append(f"status {was.status} -> {now.status}")
        if was.error != now.error:
            old = _quote(was.error) if was.error is not None else "none"
            new = _quote(now.error) if now.error is not None else "none"
            changes.append(f"error {old} -> {new}")
        where = f"reply {was.position}" + (
            f" (now {now.position})" if now.position != was.position else ""
        )
        return f"changed    {where} {was.type}: " + "; ".join(changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "type": self.type,
            "recorded": self.recorded.to_json() if self.recorded is not None else None,
            "replayed": self.replayed.to_json() if self.replayed is not None else None,
            "by": self.by,
        } | ({"cause": self.cause} if self.cause is not None else {})


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The findings, and what the caller wants said with them (``notes``: how the
    replay went; ``details``: ids, counts, for ``to_json``)."""

    findings: tuple[Finding, ...]
    recorded: int
    replayed: int
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    hitches: tuple[Hitch, ...] = ()

    @property
    def same(self) -> bool:
        return not self.findings and not self.hitches

    @property
    def daemon_differed(self) -> bool:
        """Whether the daemon answered otherwise before the replay itself differed."""
        return any(f.by == "daemon" for f in self.findings)

    def counts(self, by: str | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.findings:
            if by is None or finding.by == by:
                out[finding.kind] = out.get(finding.kind, 0) + 1
        return out

    def summary(self) -> str:
        sizes = f"{self.recorded} replies recorded, {self.replayed} replayed"
        if self.same:
            return f"same: the daemon answered as recorded ({sizes})"
        after = sum(self.counts("replay").values())
        replay = (
            f"the replay could not keep the recorded order ({len(self.hitches)} hitches; "
            f"{after} findings after it may be its own)"
        )
        if not self.daemon_differed:
            return f"replay differed: {replay}; the daemon answered as recorded before it; {sizes}"
        mine = self.counts("daemon")
        counts = ", ".join(f"{n} {k}" for k, n in mine.items())
        also = f"; {replay}" if self.hitches else ""
        return f"different: {sum(mine.values())} findings ({counts}){also}; {sizes}"

    def lines(self) -> list[str]:
        return (
            [f.text() for f in self.findings if f.by == "daemon"]
            + [f"replay     {h.text}" for h in self.hitches]
            + [f.text() for f in self.findings if f.by != "daemon"]
            + [f"note: {note}" for note in self.notes]
            + [self.summary()]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "daemon_differed": self.daemon_differed,
            "replay_differed": bool(self.hitches),
            "summary": self.summary(),
            "recorded_replies": self.recorded,
            "replayed_replies": self.replayed,
            "findings": [f.to_json() for f in self.findings],
            "hitches": [h.to_json() for h in self.hitches],
            "counts": self.counts(),
            "notes": list(self.notes),
            **self.details,
        }


def compare(
    recorded: Sequence[Reply],
    replayed: Sequence[Reply],
    *,
    notes: Iterable[str] = (),
    details: dict[str, Any] | None = None,
    hitches: Sequence[Hitch] = (),
    events: Sequence[tuple[str, str]] = (),
) -> Comparison:
    """Compare two conversations' replies (each in the order received); ``events``:
    the daemon's, as (kind, cause)."""
    was, now = _items(recorded), _items(replayed)
    matcher = difflib.SequenceMatcher(
        None, [i.kind for i in was], [i.kind for i in now], autojunk=False
    )
    changed: list[Finding] = []
    missing: list[Item] = []
    added: list[Item] = []
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            for old, new in zip(was[a1:a2], now[b1:b2], strict=True):
                if not old.same_as(new):
                    changed.append(Finding("changed", old.type, old, new))
        else:
            missing += was[a1:a2]
            added += now[b1:b2]
    # A reply that is in both, in another place: one finding, not two.
    reordered: list[Finding] = []
    for old in list(missing):
        new_match = next((n for n in added if n.same_as(old)), None)
        if new_match is not None:
            missing.remove(old)
            added.remove(new_match)
            reordered.append(Finding("reordered", old.type, old, new_match))
    findings = (
        changed
        + reordered
        + [Finding("missing", i.type, i, None) for i in missing]
        + [Finding("new", i.type, None, i) for i in added]
    )

    def order(f: Finding) -> tuple[int, int]:
        first = f.recorded or f.replayed
        assert first is not None
        return (f.recorded.position if f.recorded else 10**9, first.position)

    findings.sort(key=order)
    findings += [Finding(k, None, None, None, cause=cause) for k, cause in events]
    if hitches:
        findings = [_whose(f, hitches[0]) for f in findings]
    return Comparison(
        tuple(findings), len(recorded), len(replayed), tuple(notes), details or {}, tuple(hitches)
    )


def _whose(finding: Finding, first: Hitch) -> Finding:
    """The finding as the replay's when it lies after the first hitch on either side."""
    was, now = finding.recorded, finding.replayed
    after = (was is not None and was.position > first.recorded) or (
        now is not None and now.position > first.replayed
    )
    # An event (the end never came) happened after the hitch too.
    event = was is None and now is None
    return dataclasses.replace(finding, by="replay") if after or event else finding
