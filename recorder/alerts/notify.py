"""An alert as a notification says it: one line that names what happened, the
session and the rule, quotes the matched text, and links to the session's page.

Everything in it that a recording supplied (session ids, tool names, matched text)
has been made one printable line (:func:`~recorder.protocol.tame.one_line`); a
target that renders Markdown or HTML is sent it as plain text (the delivery's part).
The one exception is the scheduled digest (kind ``report``): its title, and the
report's markdown, every recorded string in it escaped by the report's renderer.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from recorder.alerts.occurrence import REPORT
from recorder.protocol.tame import one_line

# Session ids are the daemon's: a hostile one may be long.
ID_LIMIT = 120


class Said(Protocol):
    """What a notification says of an alert: a raised Occurrence, or a stored row
    (recorder.db.alert_reads.Alert) has these."""

    @property
    def rule(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def what(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def session_id(self) -> str | None: ...


def session_url(public_url: str, session_id: str) -> str:
    """The web console's page for a session: ``{public_url}/sessions/{id}``, the id one
    percent-encoded path segment (as recorder.web.render.session_href writes it)."""
    return public_url.rstrip("/") + "/sessions/" + quote(session_id, safe="")


def message(alert: Said, public_url: str = "") -> str:
    """``[rule] what, session S: "matched text" https://…/sessions/S``; a condition's
    ``[rule] link down for 6m 3s``, its end ``[rule] link down resolved: link up``;
    a digest's report, whole."""
    if alert.kind == REPORT:
        return alert.text
    line = f"[{one_line(alert.rule, ID_LIMIT)}] {alert.what}"
    if alert.session_id is not None:
        line += f", session {one_line(alert.session_id, ID_LIMIT)}"
    if alert.text:
        line += f': "{alert.text}"'
    if alert.session_id is not None and public_url:
        line += " " + session_url(public_url, alert.session_id)
    return line


def title(alert: Said) -> str:
    """A notification's title, for targets that show one: the rule and the subject;
    a digest's "Recorder report <since> to <until>"."""
    if alert.kind == REPORT:
        return alert.what
    return f"{one_line(alert.rule, ID_LIMIT)}: {one_line(alert.subject, ID_LIMIT)}"
