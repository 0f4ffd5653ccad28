"""Alert rules and targets as data: what ``[alerts]`` says once it is checked
(:mod:`recorder.config.alerts` builds these), and a target URL as it may be shown.

A rule's ``when`` is exactly one condition (:class:`When`). Frame rules look at each
classified frame; condition rules look at the service's state on a timer. Targets are
Apprise URLs, which carry their secrets anywhere (user, password, host, path, query):
the dataclasses never show them in a repr, and :func:`mask_url` is how one is shown.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Protocol

# Frame rules, evaluated on every classified frame (see recorder.alerts.frames).
FRAME_KINDS = (
    "session_status",
    "task_status",
    "error_reply",
    "tool",
    "frame_type",
    "unknown_type",
)
# Condition rules, evaluated on a snapshot of the service's state
# (see recorder.alerts.conditions); only these can resolve.
CONDITION_KINDS = (
    "link_down_for",
    "silent_for",
    "recording_behind",
    "writer_fault",
    "db_size_above",
    "disk_free_below",
)
KINDS = FRAME_KINDS + CONDITION_KINDS


class Pattern(Protocol):
    """A compiled rule regex (RE2's, which matches in time linear in the text)."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str) -> object | None: ...


@dataclass(frozen=True)
class When:
    """One rule's condition: ``kind`` (one of :data:`KINDS`) and what it takes."""

    kind: str
    # session_status, task_status: the statuses; frame_type: the types.
    values: tuple[str, ...] = ()
    # tool: a name or a glob (fnmatch, case-sensitive).
    tool: str | None = None
    # tool: a regex searched in the tool input's JSON text; error_reply: in its text.
    # An RE2 pattern (recorder.config.alerts): linear in the text, whatever the frame.
    matches: Pattern | None = None
    # tool: the results' statuses ("failed"); empty: the start alone decides.
    result_status: tuple[str, ...] = ()
    # link_down_for, silent_for, recording_behind: seconds.
    seconds: float | None = None
    # db_size_above, disk_free_below: bytes.
    size: int | None = None


@dataclass(frozen=True)
class Rule:
    """A named rule: when it fires, whom it tells, how often, whether it resolves."""

    name: str
    when: When
    # Target names, each defined in [alerts.targets]; empty: recorded, not sent.
    notify: tuple[str, ...] = ()
    # Seconds before the rule alerts again for the same subject; None: once per
    # session (frame rules), once per condition until it resolves (condition rules).
    repeat: float | None = None
    # A condition that ends sends a resolved notification.
    resolve: bool = False

    @property
    def condition(self) -> bool:
        return self.when.kind in CONDITION_KINDS


@dataclass(frozen=True)
class Target:
    """A notification target: its name, and its Apprise URL (a secret)."""

    name: str
    url: str = field(repr=False)

    @property
    def masked(self) -> str:
        return mask_url(self.url)


@dataclass(frozen=True)
class AlertsConfig:
    """The ``[alerts]`` table: targets by name, and rules in the file's order."""

    targets: tuple[Target, ...] = ()
    rules: tuple[Rule, ...] = ()

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def mask_url(url: str) -> str:
    """``url`` with only its scheme, host and port left: ``ntfy://***@ntfy.example.net/***``.

    Apprise URLs put tokens in every part: the user and password (``mailto://u:pw@h``),
    the path (``gotify://h/TOKEN``), the query, and the host itself (``tgram://BOT_TOKEN/``,
    ``pbul://TOKEN``). So the host is kept only when it reads as a host: an IP address,
    a dotted DNS name, or a single name followed by a port (``gotify://nas:8080/…``) or
    ``localhost``; anything else is masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return MASK
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    _, at, hostport = authority.rpartition("@")
    host, port = _split_port(hostport)
    shown = hostport if _reads_as_host(host, port) else MASK
    path, _, query = remainder.partition("#")[0].partition("?")
    return "".join(
        (
            scheme,
            "://",
            f"{MASK}@" if at else "",
            shown,
            f"/{MASK}" if path.strip("/") else "",
            f"?{MASK}" if query else "",
        )
    )


def _split_port(hostport: str) -> tuple[str, str | None]:
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            return hostport, None
        return host, after[1:] if after.startswith(":") else None
    host, colon, port = hostport.rpartition(":")
    return (host, port) if colon else (hostport, None)


def _reads_as_host(host: str, port: str | None) -> bool:
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return False  # tgram://123456789:AAH…/ is a bot token, not host:port
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    if len(labels) == 1:
        return host == "localhost" or port is not None
    return labels[-1].isalpha()
