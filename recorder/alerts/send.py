"""One notification sent through Apprise, and what the target answered, on one line
with the target's secrets masked. Blocking: the deliverer runs it in a thread.

Apprise is the home-lab's notification library: one URL per target (ntfy, Gotify,
Pushover, email, Matrix, Discord, Slack, Telegram, Home Assistant, JSON webhooks and
about a hundred more). Its URLs carry secrets anywhere in them (user, password, host,
path, query), so a URL is shown only through ``recorder.alerts.spec.mask_url``, and an answer only
through :func:`scrub`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from recorder.alerts.spec import MASK, mask_url
from recorder.protocol.tame import one_line

# An answer as stored and logged: one line, about this long.
ANSWER_LIMIT = 300
# Pieces of a URL shorter than this are not masked inside an answer ("/", "v1"):
# they would mask ordinary words, and hold no secret worth the name.
_SHORTEST_SECRET = 4


def secrets_of(url: str) -> list[str]:
    """The pieces of ``url`` that may be secret, longest first: the URL itself, its
    user and password, its host and port when ``mask_url`` masks them, each path
    segment, each query parameter and value."""
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    path, _, query = remainder.partition("#")[0].partition("?")
    pieces = [url, path, query, *path.split("/")]
    if at:
        pieces += [userinfo, *userinfo.split(":")]
    shown = mask_url(url)
    shown_host = shown.partition("://")[2].removeprefix(f"{MASK}@").partition("/")[0]
    if shown_host.partition("?")[0] != hostport:
        pieces += [hostport, *hostport.split(":")]
    for pair in query.split("&"):
        pieces += [pair, pair.partition("=")[2]]
    return sorted({p for p in pieces if len(p) >= _SHORTEST_SECRET and p != shown}, key=len)[::-1]


def scrub(answer: str, url: str) -> str:
    """A target's answer as stored and logged: one line, short, without ``url``'s
    secrets (an exception's text often quotes the URL it was sending to)."""
    for secret in secrets_of(url):
        answer = answer.replace(secret, MASK)
    return one_line(" ".join(answer.split()), ANSWER_LIMIT)


def with_timeouts(url: str, seconds: float) -> str:
    """``url`` with Apprise's connect and read timeouts (``cto``, ``rto``) set to
    ``seconds`` where it sets none: a target that accepts and never answers then frees
    its thread soon after the deliverer stops waiting for it."""
    query = url.partition("#")[0].partition("?")[2]
    given = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    extra = "&".join(f"{k}={seconds:g}" for k in ("cto", "rto") if k not in given)
    if not extra:
        return url
    base, _, fragment = url.partition("#")
    joined = base + ("&" if "?" in base else "?") + extra
    return joined + ("#" + fragment if fragment else "")


def send(
    url: str, title: str, body: str, timeout: float, *, markdown: bool = False
) -> tuple[bool, str]:
    """Send one notification to the Apprise ``url``; whether the target took it, and
    its answer (Apprise's log of the call), scrubbed. Never raises. ``markdown``: the
    body is markdown whose recorded text is escaped (the report's digest)."""
    try:
        import apprise

        _quiet(logging.getLogger("apprise"))
        # The send runs here, in the deliverer's daemon thread, and not in Apprise's
        # own pool, whose threads the interpreter joins at exit (a hung target would
        # hold the service's exit for its socket timeouts): no async_mode, and no
        # service_timeout, with which Apprise hands even a single send to its pool.
        # The socket timeouts (cto/rto) and the deliverer's own wait bound it.
        asset = apprise.AppriseAsset(async_mode=False, service_timeout=0)
        notifier = apprise.Apprise(asset=asset)
        # Connect and read, each half the time: the thread ends about when the
        # deliverer stops waiting for it.
        if not notifier.add(with_timeouts(url, timeout / 2)):
            return False, f"not a URL Apprise can send to: {mask_url(url)}"
        # Plain text: what a recording supplied must not become a target's Markdown
        # or HTML; but the digest's markdown, whose renderer escaped every recorded
        # string, is markdown (targets that render none get it converted to text).
        # log_level INFO: the answer says "Sent ..." when it went.
        # No timeout= here: with one, Apprise returns when it ends but leaves the
        # send running in a thread of its own pool, where the deliverer can no longer
        # see that the target still holds a thread. cto/rto end a silent target.
        fmt = apprise.NotifyFormat.MARKDOWN if markdown else apprise.NotifyFormat.TEXT
        result = notifier.notify(body=body, title=title, body_format=fmt, log_level=logging.INFO)
        # Each service's own lines (the call's say "Notifying 1 service(s).").
        said = " ".join(entry.message for service in result for entry in service.logs())
        answer = f"{result.status.name.lower()}: {said}" if said else result.status.name.lower()
        return bool(result), scrub(answer, url)
    except Exception as exc:  # a plugin's bug must not end the deliverer
        return False, scrub(f"{type(exc).__name__}: {exc}", url)


def warm() -> None:
    """Import Apprise and load its plugins (about 0.2 CPU-seconds, once per process):
    the service calls it as it starts, before its link reads a frame, so that the first
    alert's send does not take it from the link in the middle of a recording (a
    thread's import holds the GIL). Never raises: a send says what went wrong."""
    try:
        import apprise

        _quiet(logging.getLogger("apprise"))
        apprise.Apprise().add("json://127.0.0.1/")  # a URL loads the plugin table
    except Exception:
        pass


def _quiet(apprise_log: logging.Logger) -> None:
    """Apprise's log lines stay out of the recorder's log, where they would quote a
    URL Apprise cannot parse, secrets and all; each call's lines come back in its
    answer instead (scrubbed), INFO ones too ("Sent JSON notification.")."""
    apprise_log.propagate = False
    apprise_log.setLevel(logging.INFO)
