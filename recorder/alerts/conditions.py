"""Condition rules: the service's state, looked at on a timer, raised and resolved.

Pure: the caller gathers a :class:`Snapshot` (from the link, the writer, the
database and the disk) and gives the time; :class:`Conditions` says which
conditions are raised, which repeat, and which ended. A condition raised alerts
once until it ends (or again every ``repeat``); one that ends sends a resolved
notification when its rule says ``resolve = true``, and may then be raised anew.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from recorder.alerts.occurrence import ALERT, RESOLVED, Occurrence, shown
from recorder.alerts.spec import Rule

US = 1_000_000


@dataclass(frozen=True)
class Snapshot:
    """What the service knows of itself at a moment. Times are epoch microseconds on
    the recorder's clock; None is "not known", which changes no condition."""

    # Whether the link to the daemon is up, and since when it is up or down.
    link_up: bool | None = None
    link_since_us: int | None = None
    # The last frame received from the daemon.
    last_frame_us: int | None = None
    # Since when the sockets are not read because the writer is behind (None: they are).
    behind_since_us: int | None = None
    # The writer's fault, in one line (None: none), and since when.
    writer_fault: str | None = None
    writer_fault_since_us: int | None = None
    db_bytes: int | None = None
    disk_free_bytes: int | None = None


# What each condition is called as a subject (the dedupe key's second part).
SUBJECTS = {
    "link_down_for": "link down",
    "silent_for": "daemon silent",
    "recording_behind": "recording behind",
    "writer_fault": "writer fault",
    "db_size_above": "database size",
    "disk_free_below": "disk free",
}


@dataclass
class _Raised:
    since_us: int
    last_alert_us: int
    repeats: int = 0


class Conditions:
    """The condition rules' state: which are raised, since when."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = tuple(r for r in rules if r.condition)
        self._raised: dict[str, _Raised] = {}

    def keep(self, old: Conditions) -> None:
        """Take over ``old``'s raised conditions, for the rules that stay as they were
        (a reload): a condition does not alert anew because the file was read again."""
        kept = {r.name for r in self.rules if r in old.rules}
        self._raised = {k: v for k, v in old._raised.items() if k in kept}

    def evaluate(self, snapshot: Snapshot, now_us: int) -> list[Occurrence]:
        """The alerts and resolutions due at ``now_us``."""
        out: list[Occurrence] = []
        for rule in self.rules:
            state = raised(rule, snapshot, now_us)
            if state is None:
                continue
            held = self._raised.get(rule.name)
            is_raised, since_us, text = state
            if is_raised and held is None:
                self._raised[rule.name] = _Raised(since_us, now_us)
                out.append(_occurrence(rule, ALERT, str(since_us), text, now_us))
            elif is_raised and held is not None and rule.repeat is not None:
                if now_us - held.last_alert_us >= rule.repeat * US:
                    held.repeats += 1
                    held.last_alert_us = now_us
                    occurrence = f"{held.since_us}+{held.repeats}"
                    out.append(_occurrence(rule, ALERT, occurrence, text, now_us))
            elif not is_raised and held is not None:
                del self._raised[rule.name]
                if rule.resolve:
                    occurrence = f"{held.since_us} resolved"
                    out.append(_occurrence(rule, RESOLVED, occurrence, text, now_us))
        return out


def raised(rule: Rule, s: Snapshot, now_us: int) -> tuple[bool, int, str] | None:
    """Whether ``rule``'s condition holds in ``s`` at ``now_us``: (raised, since when,
    what it is, in words); None if the snapshot does not tell."""
    when = rule.when
    kind = when.kind
    seconds = when.seconds or 0.0
    if kind == "link_down_for":
        if s.link_up is None or s.link_since_us is None:
            return None
        down = now_us - s.link_since_us
        if s.link_up:
            return False, s.link_since_us, "link up"
        return down >= seconds * US, s.link_since_us, f"link down for {span(down)}"
    if kind == "silent_for":
        if not s.link_up or s.link_since_us is None:
            return None  # silence while the link is down is link_down_for's
        last = max(s.last_frame_us or 0, s.link_since_us)
        quiet = now_us - last
        return quiet >= seconds * US, last, f"no frame from the daemon for {span(quiet)}"
    if kind == "recording_behind":
        since = s.behind_since_us
        if since is None:
            return False, now_us, "recording keeps up"
        behind = now_us - since
        return behind >= seconds * US, since, f"recording behind for {span(behind)}"
    if kind == "writer_fault":
        if s.writer_fault is None:
            return False, now_us, "writer recovered"
        return True, s.writer_fault_since_us or now_us, f"writer fault: {s.writer_fault}"
    if kind == "db_size_above":
        if s.db_bytes is None or when.size is None:
            return None
        said = f"database {size(s.db_bytes)}, limit {size(when.size)}"
        return s.db_bytes > when.size, now_us, said
    if kind == "disk_free_below":
        if s.disk_free_bytes is None or when.size is None:
            return None
        said = f"disk free {size(s.disk_free_bytes)}, floor {size(when.size)}"
        return s.disk_free_bytes < when.size, now_us, said
    return None


def _occurrence(rule: Rule, kind: str, occurrence: str, words: str, now_us: int) -> Occurrence:
    subject = SUBJECTS[rule.when.kind]
    what = shown(words) if kind == ALERT else f"{subject} resolved: {shown(words)}"
    return Occurrence(
        rule.name, kind, subject, occurrence, what, "", None, now_us, notify=rule.notify
    )


_UNITS = (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1))


def span(us: int) -> str:
    """A duration as a person reads it: ``45s``, ``12m 5s``, ``3h 2m``, ``2d 4h``."""
    left = max(us, 0) // US
    for (unit, scale), (small, small_scale) in pairwise(_UNITS):
        if left >= scale:
            rest = left % scale // small_scale
            return f"{left // scale}{unit}" + (f" {rest}{small}" if rest else "")
    return f"{left}s"


def size(n: int) -> str:
    """Bytes as a person reads them: ``2.1 GB``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
